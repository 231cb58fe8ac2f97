//! Which front a connection came in through: a name the limits, the handover, logs and
//! metrics share. What a front does is the [`super::proxy::Front`] trait.

use serde::{Deserialize, Serialize};

/// Which front a connection came in through (its limits pool; kept across a handover).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontKind {
    /// TLS, routed by server name (443).
    Tls,
    /// HTTP/1.x, routed by `Host` (80).
    Http,
}

impl FrontKind {
    /// `tls` or `http`, as in logs, metrics labels and `status`.
    pub fn name(self) -> &'static str {
        match self {
            FrontKind::Tls => "tls",
            FrontKind::Http => "http",
        }
    }
}

impl std::fmt::Display for FrontKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
