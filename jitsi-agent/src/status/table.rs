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
        writeln!(f, "datapath pinned at {}", self.pin_dir)?;
        if self.attachments.is_empty() {
            writeln!(f, "no program attached (start the agent)")?;
        }
        for a in &self.attachments {
            writeln!(f, "  {:<24} on {:<16} {}", a.program, a.interface, a.mode)?;
        }
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
            "\n{:<16} {:<10} {:<w$} {:>10} {:>12} {:>10} {:>12}",
            "RULE", "PORT", "BACKEND", "PKTS IN", "BYTES IN", "PKTS OUT", "BYTES OUT"
        )?;
        if rates {
            write!(f, " {:>8} {:>8} {:>8} {:>8}", "PPS IN", "BPS IN", "PPS OUT", "BPS OUT")?;
        }
        writeln!(f)?;
        for (r, b) in self.rules.iter().zip(&backends) {
            let port = format!("{}/{}", r.protocol, r.port);
            write!(
                f,
                "{:<16} {port:<10} {b:<w$} {:>10} {:>12} {:>10} {:>12}",
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
        if !self.sni.routes.is_empty() || self.sni.accepted > 0 {
            write!(
                f,
                "\n{:<16} {:>12} {:>8} {:>14} {:>14}",
                "SNI ROUTE", "CONNECTIONS", "OPEN", "BYTES UP", "BYTES DOWN"
            )?;
            writeln!(f, "{}", if rates { format!(" {:>8}", "CONN/S") } else { String::new() })?;
            for r in &self.sni.routes {
                write!(
                    f,
                    "{:<16} {:>12} {:>8} {:>14} {:>14}",
                    r.name, r.connections, r.open, r.bytes_up, r.bytes_down
                )?;
                writeln!(f, "{}", if rates { format!(" {:>8.1}", r.connections_per_sec) } else { String::new() })?;
            }
            let refused: Vec<String> = self
                .sni
                .refused
                .iter()
                .filter(|r| r.connections > 0)
                .map(|r| format!("{}={}", r.reason, r.connections))
                .collect();
            writeln!(
                f,
                "accepted {}; refused: {}",
                self.sni.accepted,
                if refused.is_empty() { "none".into() } else { refused.join(" ") }
            )?;
        }
        writeln!(f, "\n{:<28} {:<6} {:>12} {:>14}", "REASON", "ACTION", "PACKETS", "BYTES")?;
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            writeln!(f, "{:<28} {:<6} {:>12} {:>14}", r.reason, r.action, r.packets, r.bytes)?;
        }
        Ok(())
    }
}
