//! `jitsi-agent teardown`: the host as before the agent. Removing the pinned links detaches
//! the programs; the maps and programs go with their pins; the splitter's policy rules
//! and routes are removed (a stopped agent removes them itself, a killed one cannot).

use tracing::info;

use crate::{config::Config, datapath, error::Result, netlink, policy_routing::PolicyRouting};

/// Removes the pins under `config.pin_dir` and the policy routing of `[splitter]` (the
/// defaults if the file has none, so leftovers of an earlier configuration go too).
pub async fn teardown(config: &Config) -> Result<()> {
    datapath::remove_pins(&config.pin_dir)?;
    info!(pin_dir = %config.pin_dir.display(), "removed the pinned links, programs and maps");
    let splitter = config.splitter.clone().unwrap_or_default();
    let h = netlink::connect()?;
    let routing = PolicyRouting {
        mark: splitter.reply_mark,
        table: splitter.route_table,
        priority: splitter.rule_priority,
        loopback: true,
    };
    routing.remove(&h).await?;
    info!(table = splitter.route_table, "removed the policy rules and routes");
    Ok(())
}
