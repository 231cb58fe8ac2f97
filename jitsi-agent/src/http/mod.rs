//! The Host splitter on port 80: reads the request head without answering it, routes by the
//! `Host` header to a configured backend (connected transparently, like the SNI splitter's),
//! replays the bytes read and relays. It answers itself only: `400` for a malformed head,
//! `421` for a host no route takes, `308` to `https://` on a `redirect_https` route, and the
//! ACME HTTP-01 challenges of the certificates the agent obtains.

pub mod head;
pub mod router;
