//! Keeping the maps in line with the configuration without disturbing entries that are right.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use aya::maps::PerCpuValues;
use jitsi_common::RuleStats;

use crate::{
    config::Config,
    datapath::Maps,
    error::{Error, Result},
    resolve::Resolved,
    rules::{self, Desired},
    sources::trie_key,
    status::existing_slots,
};

/// Brings the `rules`, `rule_ranges`, `replies`, `reply_ranges`, `host_addrs`, `flood_config`
/// and `flood_allow` maps in line with the configuration. New and changed entries are written first, stale ones removed last;
/// entries that are already right are not touched, so their traffic never sees a gap.
pub fn sync_maps(
    maps: &mut Maps,
    config: &Config,
    host_addrs: &[IpAddr],
    uplink_ifindex: u32,
    resolved: &HashMap<IpAddr, Resolved>,
) -> Result<()> {
    let existing = existing_slots(maps);
    let (slots, fresh) = rules::assign_slots(&existing, config.steer.iter().map(|r| r.name.as_str()));
    zero_rule_stats(maps, &fresh)?;
    let marked = config.splitter().map(|s| (s.reply_mark, config.transparent_backends().collect()));
    let Desired { rules, replies, rule_ranges, reply_ranges, host_addrs } =
        rules::desired(&config.steer, marked, host_addrs, uplink_ifindex, &slots, resolved);
    sync_hash("rules", &mut maps.rules, rules)?;
    sync_lpm("rule_ranges", &mut maps.rule_ranges, rule_ranges)?;
    sync_hash("replies", &mut maps.replies, replies)?;
    sync_lpm("reply_ranges", &mut maps.reply_ranges, reply_ranges)?;
    sync_hash("host_addrs", &mut maps.host_addrs, host_addrs)?;
    sync_flood(maps, config)
}

/// Brings `flood_config` and `flood_allow` in line with `[flood]` (the buckets in
/// `flood_sources` are the kernel's own).
fn sync_flood(maps: &mut Maps, config: &Config) -> Result<()> {
    let flood = config.flood();
    let want = flood.kernel_config(&config.splitter_ports());
    let err = |source| Error::Map { map: "flood_config", source };
    if maps.flood_config.get(&0, 0).map_err(err)? != want {
        maps.flood_config.set(0, want, 0).map_err(err)?;
    }
    let allow = flood.allow.iter().map(|n| {
        let key = trie_key((n.addr, n.len));
        ((key.prefix_len(), key.data()), 1u32)
    });
    sync_lpm("flood_allow", &mut maps.flood_allow, allow.collect())
}

fn zero_rule_stats(maps: &mut Maps, slots: &[u32]) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    for &slot in slots {
        let zero = PerCpuValues::try_from(vec![RuleStats::default(); cpus])
            .map_err(|source| Error::Map { map: "rule_stats", source: aya::maps::MapError::from(source) })?;
        maps.rule_stats.set(slot, zero, 0).map_err(|source| Error::Map { map: "rule_stats", source })?;
    }
    Ok(())
}

fn sync_hash<K, V>(
    name: &'static str,
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    want: Vec<(K, V)>,
) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash + Ord,
    V: aya::Pod + PartialEq,
{
    let err = |source| Error::Map { map: name, source };
    let have: BTreeMap<K, V> = map.iter().collect::<Result<_, _>>().map_err(err)?;
    let wanted: HashSet<K> = want.iter().map(|(k, _)| *k).collect();
    for (k, v) in &want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0).map_err(err)?;
        }
    }
    for k in have.keys().filter(|k| !wanted.contains(k)) {
        map.remove(k).map_err(err)?;
    }
    Ok(())
}

/// [`sync_hash`] for an LPM trie, its keys given as (prefix length, data).
fn sync_lpm<K, V>(
    name: &'static str,
    map: &mut aya::maps::lpm_trie::LpmTrie<aya::maps::MapData, K, V>,
    want: Vec<((u32, K), V)>,
) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash + Ord,
    V: aya::Pod + PartialEq,
{
    use aya::maps::lpm_trie::Key;
    let err = |source| Error::Map { map: name, source };
    let have: BTreeMap<(u32, K), V> =
        map.iter().map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v))).collect::<Result<_, _>>().map_err(err)?;
    let wanted: HashSet<(u32, K)> = want.iter().map(|(k, _)| *k).collect();
    for ((len, data), v) in &want {
        if have.get(&(*len, *data)) != Some(v) {
            map.insert(&Key::new(*len, *data), v, 0).map_err(err)?;
        }
    }
    for (len, data) in have.keys().filter(|k| !wanted.contains(k)) {
        map.remove(&Key::new(*len, *data)).map_err(err)?;
    }
    Ok(())
}
