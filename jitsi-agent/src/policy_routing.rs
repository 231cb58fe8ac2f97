//! The policy routing transparent connections need, installed and removed through rtnetlink:
//!
//! - `fwmark <reply_mark> lookup <table>` (IPv4 and IPv6): the TC program marks replies from
//!   SNI backends; the mark sends them to `<table>`, whose only route is
//! - `local default dev lo table <table>` (IPv4 and IPv6): "this destination is local", so a
//!   reply addressed to the client's address is delivered to the agent's transparent socket
//!   instead of being forwarded (or dropped, with `ip_forward=0`).
//! - with a backend on loopback, `from 127.0.0.0/8 iif lo lookup <table>` (and `::1`):
//!   replies of a local backend never cross the TC program, so they are caught by source.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::{
    route::{RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::error::{Error, Result};

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRouting {
    /// Mark set on backend replies by the TC program.
    pub mark: u32,
    /// Table with the local default routes.
    pub table: u32,
    /// Priority of the rules.
    pub priority: u32,
    /// Add the loopback source rules.
    pub loopback: bool,
}

const LOOPBACK_IFINDEX: u32 = 1;

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
    move |source| Error::Netlink { what: what.to_string(), source }
}

fn local_default_routes(table: u32) -> [netlink_packet_route::route::RouteMessage; 2] {
    [
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(table)
            .output_interface(LOOPBACK_IFINDEX)
            .build(),
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(table)
            .output_interface(LOOPBACK_IFINDEX)
            .build(),
    ]
}

impl PolicyRouting {
    /// Installs the rules and routes. Rules of an earlier run that this one also wants stay
    /// as they are (a restart that hands connections over leaves them no gap); the other rules
    /// at our table and priority go.
    pub async fn install(&self, h: &Handle) -> Result<()> {
        self.remove_rules(h, |r| !self.wants(r)).await?;
        for route in local_default_routes(self.table) {
            h.route().add(route).replace().execute().await.map_err(nl("adding the local default route"))?;
        }
        let rule = || h.rule().add().table_id(self.table).priority(self.priority).action(RuleAction::ToTable);
        exists_ok(rule().v4().fw_mark(self.mark).execute().await).map_err(nl("adding the fwmark rule (IPv4)"))?;
        exists_ok(rule().v6().fw_mark(self.mark).execute().await).map_err(nl("adding the fwmark rule (IPv6)"))?;
        if self.loopback {
            let v4 = rule().v4().source_prefix(Ipv4Addr::new(127, 0, 0, 0), 8).input_interface("lo");
            exists_ok(v4.execute().await).map_err(nl("adding the loopback rule (IPv4)"))?;
            let v6 = rule().v6().source_prefix(Ipv6Addr::LOCALHOST, 128).input_interface("lo");
            exists_ok(v6.execute().await).map_err(nl("adding the loopback rule (IPv6)"))?;
        }
        Ok(())
    }

    /// Whether `r` (at our table and priority) is one of the rules [`PolicyRouting::install`]
    /// adds: the fwmark rule with our mark, or, with `loopback`, a loopback source rule.
    fn wants(&self, r: &RuleMessage) -> bool {
        let mut mark = None;
        let mut lo_source = false;
        for a in &r.attributes {
            match a {
                RuleAttribute::FwMark(m) => mark = Some(*m),
                RuleAttribute::Iifname(i) if i == "lo" => lo_source = true,
                _ => {}
            }
        }
        match mark {
            Some(m) => m == self.mark && !lo_source,
            None => lo_source && self.loopback,
        }
    }

    /// Removes every rule pointing at the table with our priority, and the table's routes.
    pub async fn remove(&self, h: &Handle) -> Result<()> {
        self.remove_rules(h, |_| true).await?;
        for route in local_default_routes(self.table) {
            match h.route().del(route).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(e) => return Err(nl("removing the local default route")(e)),
            }
        }
        Ok(())
    }

    /// Removes the rules at our table and priority for which `drop` says so.
    async fn remove_rules(&self, h: &Handle, drop: impl Fn(&RuleMessage) -> bool) -> Result<()> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> =
                h.rule().get(version).execute().try_collect().await.map_err(nl("listing rules"))?;
            for r in rules {
                let table =
                    r.attributes.iter().find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None });
                let prio =
                    r.attributes.iter().find_map(|a| if let RuleAttribute::Priority(p) = a { Some(*p) } else { None });
                if table == Some(self.table) && prio == Some(self.priority) && drop(&r) {
                    h.rule().del(r).execute().await.map_err(nl("removing a rule"))?;
                }
            }
        }
        Ok(())
    }
}

/// A rule add that found the same rule there already succeeded.
fn exists_ok(r: std::result::Result<(), rtnetlink::Error>) -> std::result::Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        r => r,
    }
}
