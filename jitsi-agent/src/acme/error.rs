//! What obtaining, installing or reading a certificate can fail with.

/// An ACME or certificate failure (the old certificate stays in place).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused a request or could not be reached.
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The CA did not validate the name.
    #[error("{name}: not validated: {detail}")]
    NotValidated {
        /// The name.
        name: String,
        /// The CA's problem document or the state it ended in.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file or a CA response is not a usable certificate.
    #[error("{what}: {detail}")]
    BadCertificate {
        /// The file or the response.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The container to reload could not be signalled.
    #[error("reloading `{container}`: {}", cause.report())]
    Reload {
        /// The container.
        container: String,
        /// The Docker error (in the message with its causes: `status` shows the message).
        cause: Box<crate::error::Error>,
    },
    /// A worker thread (blocking work off the async runtime) panicked or was cancelled.
    #[error("{what}: the worker thread failed")]
    Worker {
        /// What it was doing.
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl AcmeError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AcmeError::Io { what: what.into(), source }
    }
}
