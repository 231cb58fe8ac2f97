//! `jitsi-agent teardown`: the host as before the agent. Removing the pinned links detaches
//! the programs; the maps and programs go with their pins; the SNI splitter's policy rules
//! and routes are removed (a stopped agent removes them itself, a killed one cannot).

use tracing::info;

use crate::{config::Config, datapath, error::Result, netlink, policy_routing::PolicyRouting};

/// Removes the pins under `config.pin_dir` and the policy routing of `config.sni` (the
/// defaults if the file has no `[sni]`, so leftovers of an earlier configuration go too).
pub async fn teardown(config: &Config) -> Result<()> {
    datapath::remove_pins(&config.pin_dir)?;
    info!(pin_dir = %config.pin_dir.display(), "removed the pinned links, programs and maps");
    let sni = config.sni.clone().unwrap_or_default();
    let h = netlink::connect()?;
    let routing =
        PolicyRouting { mark: sni.reply_mark, table: sni.route_table, priority: sni.rule_priority, loopback: true };
    routing.remove(&h).await?;
    info!(table = sni.route_table, "removed the policy rules and routes");
    Ok(())
}
