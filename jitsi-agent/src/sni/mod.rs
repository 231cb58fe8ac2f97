//! The SNI splitter on 443: reads the TLS ClientHello without terminating TLS, picks a
//! configured backend by server name and connects to it transparently (from the client's own
//! address), then relays bytes both ways.

pub mod hello;
pub mod limits;
pub mod names;
pub mod proxy;
pub mod relay;
pub mod router;
pub mod splice;
pub mod stats;
pub mod transparent;
