//! Where the programs are attached: the pinned links, checked against what each interface
//! reports (netlink for XDP and its mode, the TCX query for TC).

use std::path::Path;

use aya::programs::{SchedClassifier, tc::TcAttachType};
use serde::Serialize;

use crate::{
    datapath::{TcProg, link_pin_kind},
    error::{Error, Result},
    netlink,
};

/// One pinned link.
#[derive(Debug, Serialize)]
pub struct Attachment {
    /// Interface name (from the pin's name).
    pub interface: String,
    /// `steer_in` (XDP), `reply_out` (TC ingress) or `redirect_in` (TC ingress of an uplink in
    /// generic mode).
    pub program: &'static str,
    /// `driver` or `generic` (XDP), `tcx` (TC), or `detached`: the link is pinned but the
    /// interface no longer runs our program (it was deleted and recreated; the next agent
    /// start re-attaches).
    pub mode: String,
}

/// Reads the `link_*` pins of `pin_dir`.
pub async fn read(pin_dir: &Path) -> Result<Vec<Attachment>> {
    let entries = std::fs::read_dir(pin_dir).map_err(|e| Error::io(format!("reading {}", pin_dir.display()), e))?;
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    // The TC programs' ids (None when a pin is missing: its links then read as detached);
    // steer_in's ids are read per interface, with its pinned link's.
    let tc_id = |prog: TcProg| {
        SchedClassifier::from_pin(pin_dir.join(prog.pin())).ok().and_then(|p| p.info().ok()).map(|i| i.id())
    };
    let (reply_out, redirect_in) = (tc_id(TcProg::ReplyOut), tc_id(TcProg::RedirectIn));
    let h = netlink::connect()?;
    let mut out = Vec::new();
    for name in names {
        match link_pin_kind(&name) {
            None => {}
            Some((None, ifname)) => {
                let mode = match netlink::link_by_name(&h, ifname).await {
                    Ok(l) => l
                        .xdp_among(&crate::datapath::pinned_steer_in_ids(pin_dir, ifname))
                        .map_or("detached", |(_, mode)| mode)
                        .to_string(),
                    Err(_) => "detached".into(),
                };
                out.push(Attachment { interface: ifname.into(), program: "steer_in (XDP)", mode });
            }
            Some((Some(tc), ifname)) => {
                let (id, program) = match tc {
                    TcProg::ReplyOut => (reply_out, "reply_out (TC ingress)"),
                    TcProg::RedirectIn => (redirect_in, "redirect_in (TC ingress)"),
                };
                let attached = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
                    .map(|(_, progs)| progs.iter().any(|p| Some(p.id()) == id))
                    .unwrap_or(false);
                let mode = if attached { "tcx" } else { "detached" };
                out.push(Attachment { interface: ifname.into(), program, mode: mode.into() });
            }
        }
    }
    Ok(out)
}
