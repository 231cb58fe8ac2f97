//! A port or an inclusive range of ports, as the configuration writes them: `10000`,
//! `"10000"` or `"20000-20050"`.

use serde::{Deserialize, Deserializer, de};

/// An inclusive range of ports (`min == max`: one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port.
    pub min: u16,
    /// Last port (>= `min`).
    pub max: u16,
}

/// Why a port range was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// A part that is not 1 to 65535.
    #[error("`{0}` is not a port (1-65535)")]
    Port(String),
    /// `max` below `min`.
    #[error("`{0}`: the first port is above the last")]
    Reversed(String),
}

impl PortRange {
    /// The one port `p`.
    pub const fn one(p: u16) -> Self {
        PortRange { min: p, max: p }
    }

    /// One port, not a range.
    pub fn is_single(&self) -> bool {
        self.min == self.max
    }

    /// How many ports.
    pub fn count(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    /// Whether `p` is in the range.
    pub fn contains(&self, p: u16) -> bool {
        (self.min..=self.max).contains(&p)
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    /// The range of as many ports starting at `first` (`None`: it would run past 65535).
    pub fn moved_to(&self, first: u16) -> Option<PortRange> {
        let max = u32::from(first) + self.count() - 1;
        Some(PortRange { min: first, max: u16::try_from(max).ok()? })
    }

    /// The (first port, prefix length in bits) pairs that cover exactly this range, largest
    /// first where they can be: at most 30 for any range, one for an aligned power of two.
    pub fn prefixes(&self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        let (mut at, end) = (u32::from(self.min), u32::from(self.max) + 1);
        while at < end {
            // The largest aligned block starting at `at` that fits before `end`.
            let mut size = if at == 0 { 1 << 16 } else { 1u32 << at.trailing_zeros() };
            while at + size > end {
                size >>= 1;
            }
            out.push((at as u16, 16 - size.trailing_zeros()));
            at += size;
        }
        out
    }
}

impl TryFrom<&str> for PortRange {
    type Error = PortRangeError;
    fn try_from(s: &str) -> Result<Self, PortRangeError> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(PortRangeError::Port(p.to_owned())),
            Ok(n) => Ok(n),
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if min > max {
            return Err(PortRangeError::Reversed(s.to_owned()));
        }
        Ok(PortRange { min, max })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port (1-65535) or a range of ports (\"20000-20050\")")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRange::one(p)),
                    _ => Err(E::custom(PortRangeError::Port(v.to_string()))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::try_from(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl std::fmt::Display for PortRange {
    /// `10000` for one port, `20000-20050` for a range.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_single() { write!(f, "{}", self.min) } else { write!(f, "{}-{}", self.min, self.max) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(r: PortRange) -> Vec<u32> {
        let mut ports: Vec<u32> = r
            .prefixes()
            .into_iter()
            .flat_map(|(start, bits)| {
                assert_eq!(u32::from(start) % (1 << (16 - bits)), 0, "{start}/{bits} is not aligned");
                u32::from(start)..u32::from(start) + (1 << (16 - bits))
            })
            .collect();
        let n = ports.len();
        ports.dedup();
        assert_eq!(n, ports.len(), "prefixes overlap");
        ports
    }

    #[test]
    fn prefixes_cover_exactly_the_range_and_stay_few() {
        for (min, max, most) in
            [(10000, 10000, 1), (49152, 65535, 1), (20000, 20050, 6), (1, 65535, 16), (2, 65533, 30), (65535, 65535, 1)]
        {
            let r = PortRange { min, max };
            assert_eq!(covered(r), (u32::from(min)..=u32::from(max)).collect::<Vec<_>>(), "{r}");
            assert!(r.prefixes().len() <= most, "{r}: {:?}", r.prefixes());
        }
        assert_eq!(PortRange { min: 49152, max: 65535 }.prefixes(), vec![(49152, 2)]);
    }

    #[test]
    fn parses_ports_and_ranges_and_names_what_is_wrong() {
        let parse = |s: &str| toml::from_str::<std::collections::HashMap<String, PortRange>>(&format!("p = {s}"));
        assert_eq!(parse("10000").unwrap()["p"], PortRange::one(10000));
        assert_eq!(parse("\"10000\"").unwrap()["p"], PortRange::one(10000));
        assert_eq!(parse("\"20000-20050\"").unwrap()["p"], PortRange { min: 20000, max: 20050 });
        for (bad, says) in [
            ("0", "`0` is not a port"),
            ("70000", "`70000` is not a port"),
            ("\"20050-20000\"", "the first port is above the last"),
            ("\"20000-\"", "`` is not a port"),
            ("1.5", "a port (1-65535) or a range"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(PortRange { min: 20000, max: 20050 }.moved_to(65500), None);
        assert_eq!(PortRange { min: 20000, max: 20050 }.moved_to(30000), Some(PortRange { min: 30000, max: 30050 }));
        assert_eq!(PortRange::one(80).to_string(), "80");
    }
}
