//! What the broker counts as it works, for `/metrics`: traffic per partition, timings of the
//! write path, publish outcomes and ISR changes. Gauges (offsets, ISR sizes, lag) are read at
//! scrape time instead (see `monitor`).
//!
//! The hot paths touch only atomics: each partition takes its counter handles once, when it
//! opens. Label sets are bounded: at most [`MAX_PARTITION_SERIES`] partitions get series of
//! their own, later ones share the `stream="_other"` series. Series of a deleted stream stay
//! until the broker restarts.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;

/// Partitions with series of their own, at most.
pub const MAX_PARTITION_SERIES: usize = 4096;

fn seconds() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn batch_sizes() -> Histogram {
    // 1 to 4096 messages.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// The broker's counters and histograms. Cheap to share (every field is a handle).
#[derive(Debug)]
pub struct Metrics {
    messages_in: Family<Labels, Counter>,
    bytes_in: Family<Labels, Counter>,
    messages_out: Family<Labels, Counter>,
    bytes_out: Family<Labels, Counter>,
    isr_changes: Family<Labels, Counter>,
    cleaned: Family<Labels, Counter>,
    append_seconds: Histogram,
    append_batch: Histogram,
    fsyncs: Arc<Fsyncs>,
    ack_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    publish_errors: Family<Labels, Counter>,
    proposal_seconds: Histogram,
    labeled: Mutex<HashSet<(String, i32)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            messages_in: Family::default(),
            bytes_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            isr_changes: Family::default(),
            cleaned: Family::default(),
            append_seconds: seconds(),
            append_batch: batch_sizes(),
            fsyncs: Arc::new(Fsyncs {
                seconds: seconds(),
                messages: batch_sizes(),
            }),
            ack_seconds: Family::new_with_constructor(seconds),
            publish_errors: Family::default(),
            proposal_seconds: seconds(),
            labeled: Mutex::new(HashSet::new()),
        }
    }
}

/// The sync rounds (`fdatasync`) of every log: how long each took and how many messages it
/// made durable. Under `streams.sync.policy` `always`, one round is one group commit.
#[derive(Debug)]
pub(crate) struct Fsyncs {
    seconds: Histogram,
    messages: Histogram,
}

impl commitlog::SyncObserver for Fsyncs {
    fn synced(&self, took: std::time::Duration, records: u64) {
        self.seconds.observe(took.as_secs_f64());
        self.messages.observe(records as f64);
    }
}

/// One partition's counter handles, taken when it opens.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionCounters {
    pub in_api: (Counter, Counter),
    pub in_nats: (Counter, Counter),
    pub out_subscribers: (Counter, Counter),
    pub out_followers: (Counter, Counter),
    pub shrinks: Counter,
    pub expands: Counter,
    pub expired: Counter,
    pub compacted: Counter,
}

/// A handle on one series. The family's read guard ends here: a guard kept alive (say, as a
/// temporary of a struct literal) would deadlock the next `get_or_create` that must insert.
fn series(f: &Family<Labels, Counter>, l: &Labels) -> Counter {
    let guard = f.get_or_create(l);
    guard.clone()
}

fn with(base: &Labels, k: &str, v: &str) -> Labels {
    let mut l = base.clone();
    l.push((k.to_owned(), v.to_owned()));
    l
}

impl Metrics {
    /// The labels of a partition's series, within the cardinality bound.
    fn partition_labels(&self, stream: &str, partition: i32) -> Labels {
        let mut seen = self.labeled.lock();
        let key = (stream.to_owned(), partition);
        if seen.contains(&key) || seen.len() < MAX_PARTITION_SERIES {
            seen.insert(key);
            vec![
                ("stream".to_owned(), stream.to_owned()),
                ("partition".to_owned(), partition.to_string()),
            ]
        } else {
            vec![
                ("stream".to_owned(), "_other".to_owned()),
                ("partition".to_owned(), "_other".to_owned()),
            ]
        }
    }

    pub(crate) fn partition(&self, stream: &str, partition: i32) -> PartitionCounters {
        let l = self.partition_labels(stream, partition);
        let pair = |msgs: &Family<Labels, Counter>, bytes: &Family<Labels, Counter>, l: Labels| {
            (series(msgs, &l), series(bytes, &l))
        };
        PartitionCounters {
            in_api: pair(&self.messages_in, &self.bytes_in, with(&l, "source", "api")),
            in_nats: pair(
                &self.messages_in,
                &self.bytes_in,
                with(&l, "source", "nats"),
            ),
            out_subscribers: pair(
                &self.messages_out,
                &self.bytes_out,
                with(&l, "to", "subscriber"),
            ),
            out_followers: pair(
                &self.messages_out,
                &self.bytes_out,
                with(&l, "to", "follower"),
            ),
            shrinks: series(&self.isr_changes, &with(&l, "change", "shrink")),
            expands: series(&self.isr_changes, &with(&l, "change", "expand")),
            expired: series(&self.cleaned, &with(&l, "reason", "retention")),
            compacted: series(&self.cleaned, &with(&l, "reason", "compaction")),
        }
    }

    /// One write to a leader's log: how long it took (with the fsync, under a sync policy
    /// that syncs each write) and how many messages it carried.
    pub(crate) fn appended(&self, seconds: f64, messages: usize) {
        self.append_seconds.observe(seconds);
        self.append_batch.observe(messages as f64);
    }

    /// What each log tells of its sync rounds.
    pub(crate) fn fsyncs(&self) -> Arc<dyn commitlog::SyncObserver> {
        self.fsyncs.clone()
    }

    /// A unary publish was acked after `seconds`, under `policy` (`leader`, `all`, `none`).
    pub fn acked(&self, policy: &str, seconds: f64) {
        self.ack_seconds
            .get_or_create(&vec![("ack_policy".to_owned(), policy.to_owned())])
            .observe(seconds);
    }

    /// A publish failed with the gRPC status `code` (the API layer names it).
    pub fn publish_failed(&self, code: &str) {
        self.publish_errors
            .get_or_create(&vec![("code".to_owned(), code.to_owned())])
            .inc();
    }

    /// A metadata proposal of this broker got its verdict after `seconds`.
    pub(crate) fn proposed(&self, seconds: f64) {
        self.proposal_seconds.observe(seconds);
    }

    /// Registers every metric (sharing the same values) in `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "liftbridge_messages_in",
            "Messages recorded by partition leaders, by source (api: a Liftbridge publish; nats: a plain NATS message)",
            self.messages_in.clone(),
        );
        reg.register(
            "liftbridge_bytes_in",
            "Bytes of messages recorded by partition leaders, as received, by source",
            self.bytes_in.clone(),
        );
        reg.register(
            "liftbridge_messages_out",
            "Messages sent to subscribers and to followers",
            self.messages_out.clone(),
        );
        reg.register(
            "liftbridge_bytes_out",
            "Bytes of values sent to subscribers, and of records sent to followers",
            self.bytes_out.clone(),
        );
        reg.register(
            "liftbridge_isr_changes",
            "ISR shrinks and expands this broker made as partition leader",
            self.isr_changes.clone(),
        );
        reg.register(
            "liftbridge_cleaned_messages",
            "Messages removed by retention and by compaction",
            self.cleaned.clone(),
        );
        reg.register(
            "liftbridge_log_append_seconds",
            "Time of one write batch to a leader's log, with its fsync under a syncing policy",
            self.append_seconds.clone(),
        );
        reg.register(
            "liftbridge_log_append_batch_messages",
            "Messages per write batch to a leader's log (under a syncing policy: per fsync)",
            self.append_batch.clone(),
        );
        reg.register(
            "liftbridge_log_fsync_seconds",
            "Time of one sync round (fdatasync) of a log; under the always sync policy, one group commit",
            self.fsyncs.seconds.clone(),
        );
        reg.register(
            "liftbridge_log_fsync_messages",
            "Messages one sync round of a log made durable (the group commit's size)",
            self.fsyncs.messages.clone(),
        );
        reg.register(
            "liftbridge_publish_ack_seconds",
            "Time from a unary Publish call to its ack, by ack policy",
            self.ack_seconds.clone(),
        );
        reg.register(
            "liftbridge_publish_errors",
            "Publish calls that failed, by gRPC status code",
            self.publish_errors.clone(),
        );
        reg.register(
            "liftbridge_metadata_proposal_seconds",
            "Time from a metadata proposal of this broker to its verdict",
            self.proposal_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_past_the_bound_share_one_series() {
        let m = Metrics::default();
        for i in 0..MAX_PARTITION_SERIES as i32 {
            m.partition_labels("s", i);
        }
        assert_eq!(
            m.partition_labels("s", 0)[0].1,
            "s",
            "a known one keeps its own"
        );
        let over = m.partition_labels("t", 0);
        assert_eq!(over[0], ("stream".to_owned(), "_other".to_owned()));
        let a = m.partition("t", 1);
        let b = m.partition("u", 2);
        a.in_api.0.inc();
        assert_eq!(b.in_api.0.get(), 1, "the same series");
    }
}
