//! The gateway's one error type.
//!
//! Rule kept here: every failure answers [`Transient::is_transient`] and
//! maps to one HTTP answer ([`Error::status`]): a payload we refuse is 400,
//! anything that kept us from recording a delivery is a 5xx, so the sender
//! retries and no delivery is answered 2xx without being counted.

use resilience::Transient;

use crate::signal::Invalid;

/// Everything that can go wrong while recording a signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload was refused.
    #[error("invalid payload: {0}")]
    Invalid(#[from] Invalid),
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An object of that name exists (answer to a create).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The object changed since it was read (resourceVersion precondition).
    #[error("{0} changed since it was read")]
    Conflict(String),
    /// The API server answered with an error status.
    #[error("Kubernetes API answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The API server could not be reached or gave no answer.
    #[error("Kubernetes API unreachable: {0}")]
    Unreachable(String),
    /// The creation lock failed (an API error on the Lease, or a holder
    /// that neither finished nor expired in time).
    #[error("creation lock: {0}")]
    Lock(#[source] lease_lock::Error),
    /// The occurrence count could not be written in the attempts allowed.
    #[error("{0} kept changing: the occurrence count could not be written")]
    Contended(String),
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The HTTP status the API answers with for this error: 400 for a
    /// refused payload, 503 when the API server answered 429 or 503 (try
    /// again later), 500 for everything else that kept us from recording.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::Api {
                status: 429 | 503, ..
            } => 503,
            _ => 500,
        }
    }

    /// This error for each delivery of a count batch that failed: the same
    /// answer (status code and message), without the source chain.
    pub fn for_waiter(&self) -> Self {
        match self {
            Self::Api { status, message } => Self::Api {
                status: *status,
                message: message.clone(),
            },
            Self::Invalid(i) => Self::Invalid(i.clone()),
            Self::NotFound(n) => Self::NotFound(n.clone()),
            Self::AlreadyExists(n) => Self::AlreadyExists(n.clone()),
            Self::Conflict(n) => Self::Conflict(n.clone()),
            Self::Contended(n) => Self::Contended(n.clone()),
            Self::Unreachable(m) => Self::Unreachable(m.clone()),
            other => Self::Unreachable(other.to_string()),
        }
    }

    /// Maps a `kube` error on `what` (a name, for messages).
    pub fn from_kube(err: kube::Error, what: &str) -> Self {
        match err {
            kube::Error::Api(s) => match (s.code, s.reason.as_str()) {
                (404, _) => Self::NotFound(what.to_owned()),
                (409, "AlreadyExists") => Self::AlreadyExists(what.to_owned()),
                (409, _) => Self::Conflict(what.to_owned()),
                (code, _) => Self::Api {
                    status: code,
                    message: s.message,
                },
            },
            e => Self::Unreachable(e.to_string()),
        }
    }
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            Self::Conflict(_) | Self::Unreachable(_) | Self::Contended(_) => true,
            Self::Api { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            Self::Lock(e) => e.is_transient(),
            Self::Invalid(_)
            | Self::NotFound(_)
            | Self::AlreadyExists(_)
            | Self::Config(_)
            | Self::Bind { .. } => false,
        }
    }
}
