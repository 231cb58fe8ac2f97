//! The splitter core both fronts share: the accept loop, the connection limits, the
//! transparent connection to a backend (from the client's own address), the relay, the drain
//! and the handover to the next agent, and the counters. What routes a connection is a
//! [`proxy::Front`]'s: the TLS front (`crate::tls`) reads the ClientHello on 443, the HTTP
//! front (`crate::http`) the request head on 80. The fronts depend on this module, never on
//! each other, and this module on neither.

pub mod front;
pub mod handover;
pub mod limits;
pub mod proxy;
pub mod read;
pub mod relay;
pub mod splice;
pub mod stats;
pub mod table;
pub mod target;
pub mod transparent;
