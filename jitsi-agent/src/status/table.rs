//! The human table `status` prints.

use super::Status;

/// `1234567` -> `1.2M` (rates and byte counts in a narrow column).
fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fmt_datapath(f)?;
        self.fmt_rules(f)?;
        self.fmt_routes(f)?;
        self.fmt_certificates(f)?;
        for t in self.tasks.iter().filter(|t| t.failures > 0) {
            let now = if t.failing { "FAILING now, retried every second" } else { "recovered" };
            writeln!(f, "\nperiodic task {}: {} failure(s), {now} (see the log)", t.task, t.failures)?;
        }
        writeln!(f, "\n{:<28} {:<6} {:>12} {:>14}", "REASON", "ACTION", "PACKETS", "BYTES")?;
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            writeln!(f, "{:<28} {:<6} {:>12} {:>14}", r.reason, r.action, r.packets, r.bytes)?;
        }
        Ok(())
    }
}

impl Status {
    /// The build and where the programs are attached.
    fn fmt_datapath(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.build {
            Some(build) => writeln!(f, "datapath pinned at {} (build {build})", self.pin_dir)?,
            None => writeln!(f, "datapath pinned at {} (build not recorded)", self.pin_dir)?,
        }
        if self.attachments.is_empty() {
            writeln!(f, "no program attached (start the agent)")?;
        }
        for a in &self.attachments {
            writeln!(f, "  {:<24} on {:<16} {}", a.program, a.interface, a.mode)?;
        }
        self.fmt_flood(f)
    }

    /// The flood limits, on one line (two with allowed networks).
    fn fmt_flood(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.flood;
        if !l.enabled {
            return writeln!(f, "flood limits: off");
        }
        let guarded: Vec<String> = l.guarded_ports.iter().map(|p| format!("tcp/{p}")).collect();
        writeln!(
            f,
            "flood limits: {} packets/s (burst {}), {} new flows/s (burst {}) per source{}; {} source(s) tracked",
            l.packets_per_second,
            l.packets_burst,
            l.flows_per_second,
            l.flows_burst,
            if guarded.is_empty() { String::new() } else { format!(", SYNs to {} too", guarded.join(", ")) },
            l.sources
        )?;
        if !l.allowed.is_empty() {
            writeln!(f, "  never limited: {}", l.allowed.join(", "))?;
        }
        Ok(())
    }

    /// One line per steering rule, with rates when there are two readings.
    fn fmt_rules(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backends: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                if r.backends.is_empty() {
                    "-".to_string()
                } else {
                    r.backends.iter().map(|b| format!("{} ({})", b.address, b.state)).collect::<Vec<_>>().join(", ")
                }
            })
            .collect();
        let w = backends.iter().map(String::len).max().unwrap_or(0).max("BACKEND".len());
        let rates = self.interval_secs > 0.0;
        write!(
            f,
            "\n{:<16} {:<15} {:<w$} {:>10} {:>12} {:>10} {:>12}",
            "RULE", "PORT", "BACKEND", "PKTS IN", "BYTES IN", "PKTS OUT", "BYTES OUT"
        )?;
        if rates {
            write!(f, " {:>8} {:>8} {:>8} {:>8}", "PPS IN", "BPS IN", "PPS OUT", "BPS OUT")?;
        }
        writeln!(f)?;
        for (r, b) in self.rules.iter().zip(&backends) {
            let port = if r.port_last > r.port {
                format!("{}/{}-{}", r.protocol, r.port, r.port_last)
            } else {
                format!("{}/{}", r.protocol, r.port)
            };
            write!(
                f,
                "{:<16} {port:<15} {b:<w$} {:>10} {:>12} {:>10} {:>12}",
                r.name, r.packets_in, r.bytes_in, r.packets_out, r.bytes_out
            )?;
            if rates {
                write!(
                    f,
                    " {:>8} {:>8} {:>8} {:>8}",
                    si(r.packets_in_per_sec),
                    si(r.bits_in_per_sec),
                    si(r.packets_out_per_sec),
                    si(r.bits_out_per_sec)
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }

    /// One line per splitter route, then the totals and refusals.
    fn fmt_routes(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rates = self.interval_secs > 0.0;
        if !self.splitter.routes.is_empty() || self.splitter.accepted > 0 {
            write!(f, "\n{:<16} {:>12} {:>8} {:>14} {:>14}", "ROUTE", "CONNECTIONS", "OPEN", "BYTES UP", "BYTES DOWN")?;
            writeln!(f, "{}", if rates { format!(" {:>8}", "CONN/S") } else { String::new() })?;
            for r in &self.splitter.routes {
                write!(
                    f,
                    "{:<16} {:>12} {:>8} {:>14} {:>14}",
                    r.name, r.connections, r.open, r.bytes_up, r.bytes_down
                )?;
                writeln!(f, "{}", if rates { format!(" {:>8.1}", r.connections_per_sec) } else { String::new() })?;
            }
            let refused: Vec<String> = self
                .splitter
                .refused
                .iter()
                .filter(|r| r.connections > 0)
                .map(|r| format!("{}={}", r.reason, r.connections))
                .collect();
            writeln!(
                f,
                "accepted {}; refused: {}",
                self.splitter.accepted,
                if refused.is_empty() { "none".into() } else { refused.join(" ") }
            )?;
        }
        Ok(())
    }

    /// The `[acme]` certificates.
    fn fmt_certificates(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.certificates.is_empty() {
            writeln!(f, "\n{:<28} {:<22} {:>9}  LAST ERROR", "CERTIFICATE", "EXPIRES (UTC)", "DAYS LEFT")?;
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            for c in &self.certificates {
                let (expires, left) = match c.expires {
                    Some(e) => (utc(e), format!("{:.1}", (e - now) as f64 / 86_400.0)),
                    None => ("missing".into(), "-".into()),
                };
                writeln!(f, "{:<28} {expires:<22} {left:>9}  {}", c.name, c.last_error.as_deref().unwrap_or("-"))?;
            }
        }
        Ok(())
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of Unix seconds.
fn utc(secs: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc(1_795_564_800 + 3_660), "2026-11-25 01:01");
    }
}
