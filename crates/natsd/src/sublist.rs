//! Subscriptions indexed by subject token, with `*` (one token) and `>` (one or more trailing
//! tokens) wildcards, and queue groups.
//!
//! Matching results are cached per subject. Every change bumps a generation number, which
//! invalidates all cached results, so a reader can keep its own cache and check the generation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::client::Conn;

/// One subscription of one connection.
#[derive(Debug)]
pub struct Subscription {
    /// The connection to deliver to.
    pub conn: Arc<Conn>,
    /// The client's id for it.
    pub sid: bytes::Bytes,
    /// The subject, possibly with wildcards.
    pub subject: String,
    /// The queue group, if any.
    pub queue: Option<String>,
    /// Deliveries allowed in all (0: unlimited), set by `UNSUB sid max`.
    pub max: AtomicU64,
    /// Deliveries so far.
    pub delivered: AtomicU64,
}

impl Subscription {
    /// A subscription of no connection, to exercise the index alone (tests and fuzzing).
    #[doc(hidden)]
    pub fn detached(subject: &str) -> Arc<Subscription> {
        Arc::new(Subscription {
            conn: Arc::new(Conn::new(0, 0)),
            sid: bytes::Bytes::new(),
            subject: subject.to_owned(),
            queue: None,
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        })
    }

    /// Claims one delivery. Returns `None` if the subscription is used up, else whether this
    /// delivery is the last one allowed.
    pub fn claim(&self) -> Option<bool> {
        let n = self.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        let max = self.max.load(Ordering::Acquire);
        match max {
            0 => Some(false),
            m if n > m => None,
            m => Some(n == m),
        }
    }
}

/// Who receives a message published on one subject.
#[derive(Debug, Default)]
pub struct Matches {
    /// Plain subscriptions: each gets the message.
    pub plain: Vec<Arc<Subscription>>,
    /// Queue groups: one member of each gets it.
    pub groups: Vec<Vec<Arc<Subscription>>>,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    subs: Vec<Arc<Subscription>>,
}

/// The index of all subscriptions.
#[derive(Debug, Default)]
pub struct Sublist {
    root: RwLock<Node>,
    generation: AtomicU64,
    count: AtomicU64,
}

impl Sublist {
    /// The current generation; it changes whenever a subscription is added or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of subscriptions.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a subscription. Its subject must be valid (see [`is_valid_subject`]).
    pub fn insert(&self, sub: Arc<Subscription>) {
        let mut root = self.root.write();
        let mut node = &mut *root;
        for token in sub.subject.split('.') {
            node = node.children.entry(token.to_owned()).or_default();
        }
        node.subs.push(sub);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes a subscription; returns whether it was there.
    pub fn remove(&self, sub: &Arc<Subscription>) -> bool {
        fn walk(node: &mut Node, tokens: &[&str], sub: &Arc<Subscription>) -> bool {
            match tokens.split_first() {
                None => {
                    let before = node.subs.len();
                    node.subs.retain(|s| !Arc::ptr_eq(s, sub));
                    before != node.subs.len()
                }
                Some((first, rest)) => {
                    let Some(child) = node.children.get_mut(*first) else {
                        return false;
                    };
                    let removed = walk(child, rest, sub);
                    if child.subs.is_empty() && child.children.is_empty() {
                        node.children.remove(*first);
                    }
                    removed
                }
            }
        }
        let tokens: Vec<&str> = sub.subject.split('.').collect();
        let removed = walk(&mut self.root.write(), &tokens, sub);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    /// Whether any subscription that a message on the literal `subject` would reach satisfies
    /// `pred`. Allocates nothing.
    pub fn any(&self, subject: &str, pred: impl Fn(&Subscription) -> bool) -> bool {
        let root = self.root.read();
        walk(&root, subject.split('.'), &mut |s| pred(s), &mut 0)
    }

    /// The subscriptions a message on `subject` reaches, and how many index nodes the match
    /// visited: the work of one match, which tests and the fuzz target bound.
    #[doc(hidden)]
    pub fn match_with_work(&self, subject: &str) -> (Vec<Arc<Subscription>>, usize) {
        let root = self.root.read();
        let (mut found, mut work) = (Vec::new(), 0);
        walk(
            &root,
            subject.split('.'),
            &mut |s| {
                found.push(s.clone());
                false
            },
            &mut work,
        );
        (found, work)
    }

    /// Everyone subscribed to a literal subject.
    pub fn matches(&self, subject: &str) -> Matches {
        let root = self.root.read();
        let mut found = Vec::new();
        walk(
            &root,
            subject.split('.'),
            &mut |s| {
                found.push(s);
                false
            },
            &mut 0,
        );
        let mut m = Matches::default();
        let mut group_index: HashMap<&str, usize> = HashMap::new();
        for s in found {
            match &s.queue {
                None => m.plain.push(s.clone()),
                Some(q) => {
                    let i = *group_index.entry(q.as_str()).or_insert_with(|| {
                        m.groups.push(Vec::new());
                        m.groups.len() - 1
                    });
                    m.groups[i].push(s.clone());
                }
            }
        }
        m
    }
}

/// Calls `f` on each subscription a message reaches whose remaining subject tokens are
/// `tokens`, starting at `node`: literal matches, then `*`, then a trailing `>`. Each node is
/// visited at most once (a node has one path from the root), and only at depths up to the
/// subject's tokens, so one match costs at most the subject's tokens times the subscriptions. Stops at the
/// first call that returns true, and returns whether one did. Counts the nodes it visits in
/// `work`.
fn walk<'n>(
    node: &'n Node,
    mut tokens: std::str::Split<'_, char>,
    f: &mut dyn FnMut(&'n Arc<Subscription>) -> bool,
    work: &mut usize,
) -> bool {
    *work += 1;
    let Some(first) = tokens.next() else {
        return node.subs.iter().any(&mut *f);
    };
    // A token that is itself a wildcard (the server refuses such publishes, but the index must
    // stay cheap whoever asks) is looked up as a wildcard only: looking it up as a literal too
    // would visit the `*` child twice per token, 2^n visits for n tokens.
    let literal = (first != "*" && first != ">").then_some(first);
    for t in literal.into_iter().chain(["*"]) {
        if let Some(n) = node.children.get(t)
            && walk(n, tokens.clone(), f, work)
        {
            return true;
        }
    }
    node.children.get(">").is_some_and(|n| {
        *work += 1;
        n.subs.iter().any(&mut *f)
    })
}

/// A subscription subject: non-empty tokens separated by `.`, no whitespace, `*` only as a whole
/// token, `>` only as the whole last token.
pub fn is_valid_subject(s: &str) -> bool {
    if s.is_empty() || s.bytes().any(|b| b.is_ascii_whitespace()) {
        return false;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && (*t == ">" && i == last || !t.contains('>'))
            && (*t == "*" || !t.contains('*'))
    })
}

/// A publish subject: a valid subject without wildcards.
pub fn is_valid_literal_subject(s: &str) -> bool {
    is_valid_subject(s) && s.split('.').all(|t| t != "*" && t != ">")
}

/// A cache of matches for one reader, valid for one sublist generation.
#[derive(Debug, Default)]
pub struct MatchCache {
    generation: u64,
    entries: HashMap<String, Arc<Matches>>,
}

impl MatchCache {
    /// Entries kept at most; beyond that the cache starts over.
    const MAX: usize = 4096;

    /// The matches for `subject`, from the cache when still valid.
    pub fn get(&mut self, list: &Sublist, subject: &str) -> Arc<Matches> {
        let generation = list.generation();
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
        if let Some(m) = self.entries.get(subject) {
            return m.clone();
        }
        let m = Arc::new(list.matches(subject));
        if self.entries.len() >= Self::MAX {
            self.entries.clear();
        }
        self.entries.insert(subject.to_owned(), m.clone());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_validity() {
        for ok in ["a", "a.b", "a.*", "a.>", "*", ">", "*.b.>", "a-b_c.d:e"] {
            assert!(is_valid_subject(ok), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a.>.b", "a.b*", "a.>b", "a\t", "a.\n",
        ] {
            assert!(!is_valid_subject(bad), "{bad:?}");
        }
        assert!(is_valid_literal_subject("a.b"));
        assert!(!is_valid_literal_subject("a.*"));
        assert!(!is_valid_literal_subject("a.>"));
    }
}
