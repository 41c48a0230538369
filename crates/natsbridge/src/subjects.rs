//! Every NATS subject liftbridge-rs uses, under one namespace, and subject validation.
//!
//! The layout is Liftbridge's, so a mixed deployment would see the same traffic in the same
//! places:
//!
//! | subject | use |
//! |---|---|
//! | `<stream subject>` / `<stream subject>.<n>` | partition 0 / partition n of a stream |
//! | `<ns>.raft.metadata.<node>.accept` | Raft messages to a node |
//! | `<ns>.raft.metadata.join` | join requests |
//! | `<ns>.raft.metadata.bootstrap` | detection of a second seed |
//! | `<ns>.raft.metadata.info` | server info survey |
//! | `<ns>.raft.metadata.status.<server>` | partition status questions |
//! | `<ns>.raft.metadata.propagate` | operations forwarded to the metadata leader |
//! | `<ns>.<stream>.<p>.replicate` | follower fetches |
//! | `<ns>.<stream>.<p>.offset` | leader-epoch end-offset questions |
//! | `<ns>.notify.<server>` | partition notifications |
//! | `<ns>.ack.<unique>` | ack inboxes |
//! | `<ns>._INBOX.<unique>...` | the brokers' reply subjects (answers to follower fetches and other requests) |
//! | `<ns>.sync.<unique>` | round trips that make sure a subscription is in place |
//! | `<ns>.activity`, `<ns>.cursors[.<p>]` | internal streams |

use std::sync::atomic::{AtomicU64, Ordering};

/// The namespace when none is configured, as Liftbridge's `clustering.namespace`.
pub const DEFAULT_NAMESPACE: &str = "liftbridge-default";

/// Why a subject or name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// Nothing at all.
    #[error("{what} is empty")]
    Empty {
        /// What was being checked.
        what: &'static str,
    },
    /// A space, tab or line break.
    #[error("{what} {value:?} contains whitespace")]
    Whitespace {
        /// What was being checked.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// Two dots in a row, or a dot at either end.
    #[error("{what} {value:?} has an empty token")]
    EmptyToken {
        /// What was being checked.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// Longer than the limit.
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// What was being checked.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character that would make a stream name leave its folder: `/`, `\`, NUL, or a name
    /// of `.` or `..`.
    #[error("{what} {value:?} is not a folder name: no '/', '\\', NUL, '.' or '..'")]
    NotAFolderName {
        /// What was being checked.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// `*` or `>` where it is not allowed.
    #[error("{what} {value:?} has a misplaced wildcard")]
    Wildcard {
        /// What was being checked.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// The longest subject accepted: NATS's control line (4096 bytes) must hold it, a reply
/// subject and a size.
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// The longest stream name accepted: it is a folder name, and most file systems allow 255
/// bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 255;

fn check_common(what: &'static str, s: &str) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty { what });
    }
    if s.len() > MAX_SUBJECT_BYTES {
        return Err(SubjectError::TooLong {
            what,
            len: s.len(),
            max: MAX_SUBJECT_BYTES,
        });
    }
    if s.chars().any(char::is_whitespace) {
        return Err(SubjectError::Whitespace {
            what,
            value: s.to_owned(),
        });
    }
    if s.split('.').any(str::is_empty) {
        return Err(SubjectError::EmptyToken {
            what,
            value: s.to_owned(),
        });
    }
    Ok(())
}

/// A subject a stream may attach to: wildcards are allowed where NATS allows them (`*` as a whole
/// token, `>` as the whole last token), so a stream can record `orders.*` or `orders.>`.
///
/// # Errors
/// Empty, whitespace, an empty token, or a misplaced wildcard.
pub fn validate_subject(s: &str) -> Result<(), SubjectError> {
    check_common("subject", s)?;
    let tokens: Vec<&str> = s.split('.').collect();
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        let ok = match *t {
            "*" => true,
            ">" => i == last,
            t => !t.contains(['*', '>']),
        };
        if !ok {
            return Err(SubjectError::Wildcard {
                what: "subject",
                value: s.to_owned(),
            });
        }
    }
    Ok(())
}

/// A subject to publish on: no wildcards at all.
///
/// # Errors
/// As [`validate_subject`], or any wildcard.
pub fn validate_publish_subject(s: &str) -> Result<(), SubjectError> {
    validate_subject(s)?;
    if has_wildcards(s) {
        return Err(SubjectError::Wildcard {
            what: "publish subject",
            value: s.to_owned(),
        });
    }
    Ok(())
}

/// A stream name or namespace, which becomes part of internal subjects. Dots are allowed (they
/// only add tokens); whitespace and wildcards are not, since they would change what the subjects
/// match. Liftbridge does not check stream names at all.
///
/// # Errors
/// Empty, whitespace, an empty token, or any wildcard character.
pub fn validate_name(what: &'static str, s: &str) -> Result<(), SubjectError> {
    check_common(what, s)?;
    if s.contains(['*', '>']) {
        return Err(SubjectError::Wildcard {
            what,
            value: s.to_owned(),
        });
    }
    Ok(())
}

/// A stream name: a [name](validate_name) that is also a single folder name of at most
/// [`MAX_STREAM_NAME_BYTES`], since a stream's data lives in `<data>/streams/<name>`. The API
/// checks it, and the metadata state machine checks it again for every stream it creates,
/// whoever proposed it.
///
/// # Errors
/// As [`validate_name`], [`SubjectError::TooLong`], or [`SubjectError::NotAFolderName`].
pub fn validate_stream_name(s: &str) -> Result<(), SubjectError> {
    const WHAT: &str = "stream name";
    validate_name(WHAT, s)?;
    if s.len() > MAX_STREAM_NAME_BYTES {
        return Err(SubjectError::TooLong {
            what: WHAT,
            len: s.len(),
            max: MAX_STREAM_NAME_BYTES,
        });
    }
    if s.contains(['/', '\\', '\0']) || s == "." || s == ".." {
        return Err(SubjectError::NotAFolderName {
            what: WHAT,
            value: s.to_owned(),
        });
    }
    Ok(())
}

/// Whether a subject has a `*` or `>` token, so that it matches more than itself.
pub fn has_wildcards(subject: &str) -> bool {
    subject.split('.').any(|t| t == "*" || t == ">")
}

/// Whether a message published on `subject` (no wildcards) reaches a subscription to
/// `pattern`, by NATS's rules: `*` matches one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// The subject of partition `partition` of a stream on `subject`: partition 0 is the stream's
/// subject itself, partition n is `<subject>.<n>`.
pub fn partition_subject(subject: &str, partition: i32) -> String {
    if partition == 0 {
        subject.to_owned()
    } else {
        format!("{subject}.{partition}")
    }
}

/// Subjects of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    ns: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            ns: DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under namespace `ns`.
    ///
    /// # Errors
    /// As [`validate_name`].
    pub fn new(ns: &str) -> Result<Self, SubjectError> {
        validate_name("namespace", ns)?;
        Ok(Subjects { ns: ns.to_owned() })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Whether a message on some subject inside the namespace (`<ns>.>`) would reach a
    /// subscription to `subject`, or a message on `subject` could be one: `subject` is in the
    /// namespace, or is a wildcard that covers part of it (`>`, `*.>`, `<ns>.*`, ...). Clients
    /// never get such subjects for streams, publishes or ack inboxes unless the operator allows
    /// it.
    pub fn reaches_namespace(&self, subject: &str) -> bool {
        let mut tokens = subject.split('.');
        for ns in self.ns.split('.') {
            match tokens.next() {
                Some(">") => return true,
                Some(t) if t == "*" || t == ns => {}
                _ => return false,
            }
        }
        // Inside the namespace means at least one more token.
        tokens.next().is_some()
    }

    /// Prefix of every metadata Raft subject: `<ns>.raft.metadata.`.
    pub fn raft_prefix(&self) -> String {
        format!("{}.raft.metadata.", self.ns)
    }

    /// Raft messages addressed to node `node`.
    pub fn raft_accept(&self, node: &str) -> String {
        format!("{}.raft.metadata.{node}.accept", self.ns)
    }

    /// Requests to join the metadata group.
    pub fn raft_join(&self) -> String {
        format!("{}.raft.metadata.join", self.ns)
    }

    /// Where seeds announce themselves, to detect a second seed.
    pub fn raft_bootstrap(&self) -> String {
        format!("{}.raft.metadata.bootstrap", self.ns)
    }

    /// The server info survey.
    pub fn server_info(&self) -> String {
        format!("{}.raft.metadata.info", self.ns)
    }

    /// Partition status questions for server `server`.
    pub fn partition_status(&self, server: &str) -> String {
        format!("{}.raft.metadata.status.{server}", self.ns)
    }

    /// Operations forwarded to the metadata leader.
    pub fn propagate(&self) -> String {
        format!("{}.raft.metadata.propagate", self.ns)
    }

    /// Follower fetches for a partition.
    pub fn replicate(&self, stream: &str, partition: i32) -> String {
        format!("{}.{stream}.{partition}.replicate", self.ns)
    }

    /// Leader-epoch end-offset questions for a partition.
    pub fn leader_epoch_offset(&self, stream: &str, partition: i32) -> String {
        format!("{}.{stream}.{partition}.offset", self.ns)
    }

    /// Partition notifications for server `server`.
    pub fn notify(&self, server: &str) -> String {
        format!("{}.notify.{server}", self.ns)
    }

    /// A fresh, unique ack inbox: `<ns>.ack.<unique>`.
    pub fn ack_inbox(&self) -> String {
        format!("{}.ack.{}", self.ns, unique_id())
    }

    /// The prefix of the brokers' reply subjects: `<ns>._INBOX`. Inside the namespace, so that
    /// applications kept out of it never read the answers to follower fetches.
    pub fn inbox_prefix(&self) -> String {
        format!("{}._INBOX", self.ns)
    }

    /// A subject for a round trip nobody answers: `<ns>.sync.<unique>`.
    pub fn sync(&self) -> String {
        format!("{}.sync.{}", self.ns, unique_id())
    }

    /// Whether a client-given ack inbox may receive acks: a subject without wildcards, and
    /// outside the namespace unless it is one of the brokers' own ack inboxes (`<ns>.ack.…`,
    /// which other brokers' publishes carry). An ack elsewhere in the namespace would speak for
    /// a broker.
    pub fn is_ack_inbox_allowed(&self, inbox: &str) -> bool {
        validate_publish_subject(inbox).is_ok()
            && (!self.reaches_namespace(inbox)
                || inbox
                    .strip_prefix(self.ns.as_str())
                    .is_some_and(|rest| rest.starts_with(".ack.")))
    }

    /// The activity stream's subject.
    pub fn activity(&self) -> String {
        format!("{}.activity", self.ns)
    }

    /// The cursors stream's subject (its partition n is `<ns>.cursors.<n>`).
    pub fn cursors(&self) -> String {
        format!("{}.cursors", self.ns)
    }
}

/// A 22-character identifier: 128 bits from the operating system's CSPRNG, in base 62. Ack
/// inboxes are made of these, and an ack shows its inbox, so one id must tell nothing about
/// the next (a counter under a per-process seed did). Unique with overwhelming likelihood.
pub fn unique_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS refused its randomness (it does not on the supported systems): a process-wide
        // counter under the clock keeps ids unique, though guessable.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes[..8].copy_from_slice(&t.to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    let mut v = u128::from_le_bytes(bytes);
    let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    for _ in 0..22 {
        out.push(alphabet[(v % 62) as usize] as char);
        v /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_nats_wildcards() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.b", "a.b.c", false),
            ("a.b.c", "a.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("*.b", "a.b", true),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a.b", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.d", false),
        ];
        for (pattern, subject, want) in cases {
            assert_eq!(
                subject_matches(pattern, subject),
                want,
                "{pattern} vs {subject}"
            );
        }
    }

    #[test]
    fn names_follow_liftbridges_layout() {
        let s = Subjects::default();
        assert_eq!(
            s.raft_accept("n1"),
            "liftbridge-default.raft.metadata.n1.accept"
        );
        assert_eq!(s.raft_join(), "liftbridge-default.raft.metadata.join");
        assert_eq!(
            s.raft_bootstrap(),
            "liftbridge-default.raft.metadata.bootstrap"
        );
        assert_eq!(s.server_info(), "liftbridge-default.raft.metadata.info");
        assert_eq!(
            s.partition_status("srv"),
            "liftbridge-default.raft.metadata.status.srv"
        );
        assert_eq!(s.propagate(), "liftbridge-default.raft.metadata.propagate");
        assert_eq!(
            s.replicate("orders", 2),
            "liftbridge-default.orders.2.replicate"
        );
        assert_eq!(
            s.leader_epoch_offset("orders", 0),
            "liftbridge-default.orders.0.offset"
        );
        assert_eq!(s.notify("srv"), "liftbridge-default.notify.srv");
        assert_eq!(s.activity(), "liftbridge-default.activity");
        assert_eq!(s.cursors(), "liftbridge-default.cursors");
        let inbox = s.ack_inbox();
        assert!(
            inbox.starts_with("liftbridge-default.ack.")
                && inbox.len() == "liftbridge-default.ack.".len() + 22
        );
        assert_ne!(s.ack_inbox(), inbox);
        let custom = Subjects::new("prod").unwrap();
        assert_eq!(custom.replicate("a", 1), "prod.a.1.replicate");
        assert_eq!(custom.raft_prefix(), "prod.raft.metadata.");
    }

    #[test]
    fn subjects_reaching_the_namespace() {
        let s = Subjects::new("lb.prod").unwrap();
        for yes in [
            ">",
            "*.>",
            "*.*.>",
            "lb.>",
            "lb.prod.>",
            "lb.*.x",
            "*.prod.raft.metadata.join",
            "lb.prod.ack.x",
            "*.*.*",
        ] {
            assert!(s.reaches_namespace(yes), "{yes}");
        }
        for no in [
            "lb",
            "lb.prod",
            "lb.other.x",
            "orders.>",
            "*.*",
            "x.prod.y",
            "lb.prodx.y",
        ] {
            assert!(!s.reaches_namespace(no), "{no}");
        }
    }

    #[test]
    fn ack_inboxes_outside_the_namespace_or_the_brokers_own() {
        let s = Subjects::default();
        assert!(s.is_ack_inbox_allowed("my.acks"));
        assert!(s.is_ack_inbox_allowed(&s.ack_inbox()));
        for no in [
            "my.*",
            ">",
            "liftbridge-default.raft.metadata.join",
            "liftbridge-default.ack",
            "liftbridge-default.ack.*",
        ] {
            assert!(!s.is_ack_inbox_allowed(no), "{no}");
        }
    }

    #[test]
    fn partition_subjects() {
        assert_eq!(partition_subject("orders", 0), "orders");
        assert_eq!(partition_subject("orders", 3), "orders.3");
    }

    #[test]
    fn validation_says_what_is_wrong() {
        for ok in ["a", "a.b", "orders.*", "orders.>", "*.x", ">"] {
            validate_subject(ok).unwrap();
        }
        assert_eq!(
            validate_subject(""),
            Err(SubjectError::Empty { what: "subject" })
        );
        assert!(matches!(
            validate_subject("a b"),
            Err(SubjectError::Whitespace { .. })
        ));
        assert!(matches!(
            validate_subject("a\t"),
            Err(SubjectError::Whitespace { .. })
        ));
        assert!(matches!(
            validate_subject("a..b"),
            Err(SubjectError::EmptyToken { .. })
        ));
        assert!(matches!(
            validate_subject(".a"),
            Err(SubjectError::EmptyToken { .. })
        ));
        assert!(matches!(
            validate_subject("a.>.b"),
            Err(SubjectError::Wildcard { .. })
        ));
        assert!(matches!(
            validate_subject("a.b*"),
            Err(SubjectError::Wildcard { .. })
        ));
        assert!(matches!(
            validate_publish_subject("a.*"),
            Err(SubjectError::Wildcard { .. })
        ));
        validate_publish_subject("a.b").unwrap();
        validate_name("stream", "my.stream").unwrap();
        assert!(matches!(
            validate_name("stream", "my stream"),
            Err(SubjectError::Whitespace { .. })
        ));
        assert!(matches!(
            validate_name("stream", "s*"),
            Err(SubjectError::Wildcard { .. })
        ));
        assert_eq!(
            validate_subject("a b").unwrap_err().to_string(),
            "subject \"a b\" contains whitespace"
        );
        assert!(Subjects::new("bad ns").is_err());
    }

    #[test]
    fn unique_ids_share_nothing_guessable() {
        // Consecutive ids are independent random values: no common prefix beyond chance.
        let (a, b) = (unique_id(), unique_id());
        let shared = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        assert!(shared < 8, "{a} {b}");
        let (a, b) = (a.as_bytes(), b.as_bytes());
        assert!(
            a[11..] != b[11..] && a[..11] != b[..11],
            "both halves change"
        );
    }

    #[test]
    fn unique_ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| unique_id()).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
