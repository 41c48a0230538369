//! Per-user publish and subscribe permissions, as nats-server's `permissions` block.
//!
//! A rule has allow and deny lists of subject patterns (wildcards allowed). A subject passes
//! when it matches some allow pattern (or the allow list is empty) and no deny pattern.
//!
//! **Subscriptions are checked more strictly than nats-server does.** A subscription must lie
//! wholly inside an allow pattern, and it is refused if it could receive any subject a deny
//! pattern names. nats-server instead accepts such a wildcard subscription and filters the
//! denied subjects out at delivery. Refusing costs nothing on the delivery path, and a
//! wildcard can never reach what a deny reserves.

/// Allow and deny lists of subject patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Patterns a subject must match one of (empty: any).
    pub allow: Vec<String>,
    /// Patterns a subject must match none of.
    pub deny: Vec<String>,
}

/// What one user may publish to and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Publishing.
    pub publish: Rule,
    /// Subscribing.
    pub subscribe: Rule,
}

/// Whether the literal `subject` matches `pattern` (`*` one token, `>` the rest).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every subject `sub` (a pattern) can match also matches `pattern`.
fn within(sub: &str, pattern: &str) -> bool {
    let mut s = sub.split('.');
    let mut p = pattern.split('.');
    loop {
        match (s.next(), p.next()) {
            (Some(_), Some(">")) => return true,
            (Some(">"), _) => return false,
            (Some(_), Some("*")) => {}
            (Some(a), Some(b)) if a == b && a != "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(m), Some(n)) if m == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Rule {
    /// Whether a message may be published to the literal `subject`.
    pub fn allows_publish(&self, subject: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|p| matches(p, subject)))
            && !self.deny.iter().any(|p| matches(p, subject))
    }

    /// Whether a subscription to `subject` (wildcards allowed) is allowed (see the module docs).
    pub fn allows_subscribe(&self, subject: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|p| within(subject, p)))
            && !self.deny.iter().any(|p| overlaps(subject, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: &[&str], deny: &[&str]) -> Rule {
        Rule {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn literal_subjects_match_wildcard_patterns() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches(">", "x"));
        assert!(!matches("a.b", "a.b.c"));
    }

    #[test]
    fn publishing_needs_an_allow_and_no_deny() {
        let r = rule(&["orders.>", "_INBOX.>"], &["orders.secret"]);
        assert!(r.allows_publish("orders.eu"));
        assert!(r.allows_publish("_INBOX.x.y"));
        assert!(!r.allows_publish("orders.secret"));
        assert!(!r.allows_publish("liftbridge-default.raft.x"));
        assert!(rule(&[], &["a.>"]).allows_publish("b"));
    }

    #[test]
    fn a_wildcard_subscription_must_stay_inside_the_allow_and_clear_of_every_deny() {
        let r = rule(&["orders.>"], &["orders.secret"]);
        assert!(r.allows_subscribe("orders.eu"));
        assert!(r.allows_subscribe("orders.*.x"));
        assert!(
            !r.allows_subscribe("orders.*"),
            "it could receive orders.secret"
        );
        assert!(!r.allows_subscribe(">"));
        assert!(!r.allows_subscribe("*.eu"), "wider than orders.>");
        let open = rule(&[], &["liftbridge-default.>"]);
        assert!(open.allows_subscribe("orders.>"));
        assert!(!open.allows_subscribe(">"));
        assert!(!open.allows_subscribe("*.raft"));
        assert!(!open.allows_subscribe("liftbridge-default.raft"));
    }
}
