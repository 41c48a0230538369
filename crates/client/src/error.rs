//! The client's one error type.

use std::time::Duration;

/// Everything a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// CreateStream: a stream of that name exists.
    #[error("stream already exists")]
    StreamExists,
    /// The stream does not exist.
    #[error("no such stream")]
    NoSuchStream,
    /// The stream exists but not that partition (or the partition was deleted while reading).
    #[error("no such partition")]
    NoSuchPartition,
    /// The server called does not lead the partition, even after refreshing the metadata.
    #[error("server is not the partition leader")]
    NotLeader,
    /// The partition is read-only: publishes are refused.
    #[error("partition is read-only")]
    ReadonlyPartition,
    /// A subscription read everything of a read-only partition.
    #[error("end of read-only partition")]
    EndOfReadonlyPartition,
    /// A subscription reached its stop position.
    #[error("stop position reached")]
    StopPositionReached,
    /// A subscription with stop position "latest" found an empty partition.
    #[error("the stream is empty")]
    StreamEmpty,
    /// The partition is paused; publish, or subscribe with `resume`, to resume it.
    #[error("partition is paused")]
    PartitionPaused,
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request itself is wrong (the server's words).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A publish was refused by an ack error or a PublishAsync error.
    #[error("publish refused ({code}): {message}")]
    PublishRefused {
        /// The server's code, e.g. `INCORRECT_OFFSET` or `NOT_FOUND`.
        code: String,
        /// Its explanation.
        message: String,
    },
    /// The server refused a publish because its disk is nearly full (the server's words);
    /// it takes publishes again once space is freed.
    #[error("server full: {0}")]
    ServerFull(String),
    /// The server's authorization refused the call (the server's words).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No broker could be reached.
    #[error("no broker reachable: {0}")]
    NoBrokers(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A consumer-group subscription was refused: a newer generation of the group holds the
    /// partition (the server's words).
    #[error("partition assigned elsewhere: {0}")]
    NotAssigned(String),
    /// The consumer group does not exist (any more): its last member left or expired.
    #[error("no such consumer group")]
    NoSuchGroup,
    /// Any other failure, with the server's status.
    #[error("transport: {0}")]
    Transport(tonic::Status),
}

impl Error {
    /// The error for a status from the server, read the way Liftbridge's clients read them.
    pub fn from_status(s: tonic::Status) -> Error {
        use tonic::Code;
        let msg = s.message().to_lowercase();
        match s.code() {
            Code::AlreadyExists => Error::StreamExists,
            Code::NotFound if msg.contains("consumer group") => Error::NoSuchGroup,
            Code::NotFound if msg.contains("partition") => Error::NoSuchPartition,
            Code::NotFound => Error::NoSuchStream,
            Code::FailedPrecondition if msg.contains("not currently assigned") => {
                Error::NotAssigned(s.message().to_owned())
            }
            Code::FailedPrecondition if msg.contains("leader") => Error::NotLeader,
            Code::FailedPrecondition if msg.contains("readonly") || msg.contains("read-only") => {
                Error::ReadonlyPartition
            }
            Code::FailedPrecondition if msg.contains("pause") => Error::PartitionPaused,
            Code::ResourceExhausted if msg.contains("readonly") => Error::EndOfReadonlyPartition,
            Code::ResourceExhausted if msg.contains("empty") => Error::StreamEmpty,
            Code::ResourceExhausted if msg.contains("bytes free") => {
                Error::ServerFull(s.message().to_owned())
            }
            Code::ResourceExhausted => Error::StopPositionReached,
            Code::InvalidArgument => Error::InvalidArgument(s.message().to_owned()),
            // The original answers a denied call with Unknown, and a unary publish with a
            // wrong expected offset with Unknown "incorrect expected offset"; neither is worth
            // a retry.
            Code::PermissionDenied => Error::PermissionDenied(s.message().to_owned()),
            Code::Unknown if msg.contains("not authorized") => {
                Error::PermissionDenied(s.message().to_owned())
            }
            Code::Aborted => Error::PublishRefused {
                code: "INCORRECT_OFFSET".into(),
                message: s.message().to_owned(),
            },
            Code::Unknown if msg.contains("incorrect expected offset") => Error::PublishRefused {
                code: "INCORRECT_OFFSET".into(),
                message: s.message().to_owned(),
            },
            _ => Error::Transport(s),
        }
    }

    /// Whether the metadata may be stale: the call should be retried after a refresh.
    pub(crate) fn is_retriable(&self) -> bool {
        match self {
            Error::NotLeader => true,
            Error::Transport(s) => matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::FailedPrecondition | tonic::Code::Unknown
            ),
            _ => false,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::from_status(s)
    }
}

/// Shorthand for results of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_originals_unknown_statuses_are_read_for_what_they_mean() {
        let denied = Error::from_status(tonic::Status::unknown(
            "The client is not authorized to call Publish on resource s",
        ));
        assert!(matches!(denied, Error::PermissionDenied(_)), "{denied:?}");
        assert!(!denied.is_retriable());
        let offset = Error::from_status(tonic::Status::unknown("incorrect expected offset"));
        assert!(
            matches!(&offset, Error::PublishRefused { code, .. } if code == "INCORRECT_OFFSET"),
            "{offset:?}"
        );
        assert!(!offset.is_retriable());
        let ours = Error::from_status(tonic::Status::aborted("incorrect expected offset"));
        assert!(matches!(ours, Error::PublishRefused { .. }));
        // Any other Unknown stays a transport error, retried after a refresh.
        let other = Error::from_status(tonic::Status::unknown("connection reset"));
        assert!(matches!(other, Error::Transport(_)) && other.is_retriable());
        let denied = Error::from_status(tonic::Status::permission_denied("no"));
        assert!(matches!(denied, Error::PermissionDenied(_)));
    }
}
