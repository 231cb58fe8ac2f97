//! Where the programs are attached: the pinned links, checked against what each interface
//! reports (netlink for XDP and its mode, the TCX query for TC).

use std::path::Path;

use aya::programs::{SchedClassifier, Xdp, tc::TcAttachType};
use aya_obj::programs::XdpAttachType;
use serde::Serialize;

use crate::{
    error::{Error, Result},
    netlink,
};

/// One pinned link.
#[derive(Debug, Serialize)]
pub struct Attachment {
    /// Interface name (from the pin's name).
    pub interface: String,
    /// `steer_in` (XDP) or `reply_out` (TC ingress).
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
    let prog_id = |pin: &str, xdp: bool| -> Option<u32> {
        let info = if xdp {
            Xdp::from_pin(pin_dir.join(pin), XdpAttachType::Interface).ok()?.info().ok()?
        } else {
            SchedClassifier::from_pin(pin_dir.join(pin)).ok()?.info().ok()?
        };
        Some(info.id())
    };
    let h = netlink::connect()?;
    let mut out = Vec::new();
    for name in names {
        if let Some(ifname) = name.strip_prefix("link_xdp_") {
            let ours = prog_id("prog_steer_in", true);
            let mode = match netlink::link_by_name(&h, ifname).await {
                Ok(l) => match l.xdp {
                    Some((id, mode)) if Some(id) == ours => mode.to_string(),
                    _ => "detached".into(),
                },
                Err(_) => "detached".into(),
            };
            out.push(Attachment { interface: ifname.into(), program: "steer_in (XDP)", mode });
        } else if let Some(ifname) = name.strip_prefix("link_tc_") {
            let ours = prog_id("prog_reply_out", false);
            let attached = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
                .map(|(_, progs)| progs.iter().any(|p| Some(p.id()) == ours))
                .unwrap_or(false);
            let mode = if attached { "tcx" } else { "detached" };
            out.push(Attachment { interface: ifname.into(), program: "reply_out (TC ingress)", mode: mode.into() });
        }
    }
    Ok(out)
}
