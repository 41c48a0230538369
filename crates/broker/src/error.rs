//! The broker's one error type. Each variant says what went wrong in words a client can act on;
//! the `api` crate alone chooses the gRPC status code for it.

/// Everything a broker operation can refuse or fail with.
///
/// The messages of the variants a client sees match Liftbridge's, so that clients which match on
/// them keep working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The request itself is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The stream, partition or cursor stream does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The stream exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request reached the wrong broker or the partition is in the wrong state
    /// (not leader, paused, read-only); the client should refresh its metadata and retry.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A subscription reached its end: its stop position, or the end of a read-only partition.
    #[error("{0}")]
    End(String),
    /// The operation did not finish before its deadline.
    #[error("{0}")]
    Timeout(String),
    /// The feature is not available in this version.
    #[error("{0}")]
    Unimplemented(String),
    /// A publish was refused by the partition leader with an ack error.
    #[error("{0}")]
    AckRefused(String),
    /// The server has no room for more: its data folder is nearly full.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down; retry on another server or after the restart.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: storage, NATS or metadata failure.
    #[error("{0}")]
    Internal(String),
}

impl BrokerError {
    pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> BrokerError {
        BrokerError::Internal(format!("{what}: {e}"))
    }
}

impl From<metastore::service::MetaError> for BrokerError {
    fn from(e: metastore::service::MetaError) -> Self {
        use metastore::OpError;
        use metastore::service::MetaError;
        match e {
            MetaError::Op(OpError::AlreadyExists(_)) => {
                BrokerError::AlreadyExists("stream already exists".into())
            }
            MetaError::Op(OpError::NotFound(m)) => BrokerError::NotFound(m),
            MetaError::Op(OpError::FailedPrecondition(m)) => BrokerError::FailedPrecondition(m),
            MetaError::Op(OpError::InvalidArgument(m)) => BrokerError::InvalidArgument(m),
            MetaError::NoLeader => BrokerError::Internal("no known metadata leader".into()),
            MetaError::Timeout => BrokerError::Timeout("metadata request timed out".into()),
            other => BrokerError::Internal(other.to_string()),
        }
    }
}

/// Shorthand for results of broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
