//! The rule lookups: is an address the host's and which rule steers a port (`steer_in`), which
//! rule a backend's packet replies for (`reply_out`). A rule for one port is an exact
//! `rules`/`replies` entry; a port range is found in the `rule_ranges`/`reply_ranges` LPM
//! tries, at the same cost whatever the range's size (one trie walk over at most 32 or 160 key
//! bits).

use aya_ebpf::maps::lpm_trie::Key;
use jitsi_common::{
    HostAddrKey, RANGE_KEY_FIXED_BITS, REPLY_RANGE_KEY_FIXED_BITS, RULE_HAS_BACKEND, RULE_RESOLVED, RangeKey, Reason,
    Reply, ReplyKey, ReplyRangeKey, Rule, RuleKey, RuleRange,
};

use crate::maps::{HOST_ADDRS, REPLIES, REPLY_RANGES, RULE_RANGES, RULES};

/// Whether `addr` is one of the host addresses steered packets are sent to.
#[inline(always)]
pub fn is_local(addr: [u8; 16], family: u8) -> bool {
    HOST_ADDRS.get_ptr(HostAddrKey { addr, family, _pad: [0; 3] }).is_some()
}

/// The rule for (protocol, family, port) if it can steer, and the backend port this packet
/// goes to (a range keeps the offset from its first port); otherwise why not. The rule is the
/// map's value, not a copy (the stack is 512 bytes): valid while the program runs.
#[inline(always)]
pub fn rule_for(protocol: u8, family: u8, port: u16) -> Result<(&'static Rule, u16), Reason> {
    let (rule, backend_port) = match RULES.get_ptr(RuleKey { port, protocol, family }) {
        Some(ptr) => {
            // SAFETY: a valid map value pointer, which lives until the program returns.
            let rule: &'static Rule = unsafe { &*ptr };
            (rule, rule.backend_port)
        }
        None => {
            let key = Key::new(RANGE_KEY_FIXED_BITS + 16, RangeKey { protocol, family, port: port.to_be_bytes() });
            let range: &'static RuleRange = RULE_RANGES.get(&key).ok_or(Reason::InNoRule)?;
            (&range.rule, range.rule.backend_port.wrapping_add(port.wrapping_sub(range.public_min)))
        }
    };
    if rule.flags & RULE_HAS_BACKEND == 0 {
        return Err(Reason::InNoBackendForFamily);
    }
    if rule.flags & RULE_RESOLVED == 0 {
        return Err(Reason::InBackendDown);
    }
    Ok((rule, backend_port))
}

/// What a packet from backend `addr:port` is a reply of, with `public_port` the port it
/// leaves from (a range keeps the offset from its first port).
#[inline(always)]
pub fn reply_for(addr: [u8; 16], port: u16, protocol: u8, family: u8) -> Option<Reply> {
    if let Some(ptr) = REPLIES.get_ptr(ReplyKey { addr, port, protocol, family }) {
        // SAFETY: valid map value pointer, copied out.
        return Some(unsafe { *ptr });
    }
    let key =
        Key::new(REPLY_RANGE_KEY_FIXED_BITS + 16, ReplyRangeKey { protocol, family, addr, port: port.to_be_bytes() });
    let range = REPLY_RANGES.get(&key)?;
    let mut reply = range.reply;
    reply.public_port = reply.public_port.wrapping_add(port.wrapping_sub(range.backend_min));
    Some(reply)
}
