//! The command line: every command, flag and help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Look at and poke a Liftbridge cluster.
#[derive(Debug, Parser)]
#[command(
    name = "lift",
    version,
    about = "Look at and poke a Liftbridge cluster: streams, messages, cursors, groups, health, benchmarks",
    after_help = "Examples:\n  lift stream create orders --subject orders --partitions 3\n  lift pub orders 'hello'\n  lift sub orders --earliest\n  lift cluster health\n\nThe server: --server host:port (repeatable), $LIFT_SERVER, or the current context (lift context).\nExit codes: 0 success; 1 an error (one line on stderr); 2 a usage error; 3 cluster health: under-replicated; 4 cluster health: offline partitions."
)]
pub struct Cli {
    /// Where and how to connect.
    #[command(flatten)]
    pub conn: Conn,
    /// Print data as JSON, one object per line (a stable shape).
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Connection flags, on every command.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// A broker's gRPC address, host:port (repeatable, or comma-separated). Default: the
    /// current context's, else 127.0.0.1:9292.
    #[arg(
        long = "server",
        short = 's',
        env = "LIFT_SERVER",
        value_delimiter = ',',
        global = true
    )]
    pub servers: Vec<String>,
    /// A named context (see `lift context`) instead of the current one.
    #[arg(long, env = "LIFT_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Use TLS, verifying the brokers with this CA certificate (PEM).
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one; with --tls-key.
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM); with --tls-cert.
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name to verify the brokers' certificates against (default: the host).
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
    /// Deadline of each call (connecting, metadata, admin calls), e.g. 5s.
    #[arg(long, global = true, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
}

/// A duration as `500ms`, `5s`, `2m`, `1h30m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 500ms, 5s, 2m, 1h30m)"))
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create, list, inspect, delete, pause, resume and make streams read-only.
    #[command(subcommand)]
    Stream(StreamCmd),
    /// Publish messages to a stream (or a NATS subject).
    #[command(
        after_help = "Examples:\n  lift pub orders 'hello'\n  seq 3 | lift pub orders\n  lift pub orders --count 1000 'order {n}'\n  lift pub orders --key user-1 --header source=cli 'hi' --ack-policy all\n  lift pub --subject orders.eu 'plain NATS message'"
    )]
    Pub(PubArgs),
    /// Read messages from a stream partition.
    #[command(
        after_help = "Examples:\n  lift sub orders --earliest\n  lift sub orders --since 5m --json\n  lift sub orders --offset 100 --count 10 --raw\n  lift sub orders --follow"
    )]
    Sub(SubArgs),
    /// Read and set consumer cursors.
    #[command(subcommand)]
    Cursor(CursorCmd),
    /// Consumer groups: members, assignments and lag.
    #[command(subcommand)]
    Group(GroupCmd),
    /// The brokers, and whether every partition is healthy.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Measure publish and subscribe throughput and latency.
    #[command(
        after_help = "Examples:\n  lift bench bench --create --messages 100000 --size 128\n  lift bench bench --create --publishers 4 --duration 30s --rate 2000 --ack-policy all\n  lift bench bench --create --subscribers 2 --messages 50000 --json"
    )]
    Bench(BenchArgs),
    /// Named connection settings, kept in a small file.
    #[command(subcommand)]
    Context(ContextCmd),
    /// Print shell completions.
    #[command(after_help = "Example:\n  lift completions bash > /etc/bash_completion.d/lift")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `lift stream`.
#[derive(Debug, Subcommand)]
pub enum StreamCmd {
    /// Create a stream attached to a NATS subject.
    #[command(
        after_help = "Example:\n  lift stream create orders --subject orders --partitions 3 --replication-factor 3 --retention-max-age 24h"
    )]
    Create(CreateArgs),
    /// List the streams.
    #[command(after_help = "Example:\n  lift stream ls --json")]
    Ls,
    /// A stream's partitions: leader, replicas, ISR, high watermark, newest offset, state.
    #[command(after_help = "Example:\n  lift stream info orders")]
    Info {
        /// The stream.
        name: String,
    },
    /// Delete a stream and its data.
    #[command(after_help = "Example:\n  lift stream delete orders")]
    Delete {
        /// The stream.
        name: String,
    },
    /// Pause partitions (all by default); a publish to a paused partition resumes it.
    #[command(after_help = "Example:\n  lift stream pause orders --partition 1 --resume-all")]
    Pause {
        /// The stream.
        name: String,
        /// A partition (repeatable); default all.
        #[arg(long = "partition", short = 'p')]
        partitions: Vec<i32>,
        /// A publish to any paused partition resumes them all.
        #[arg(long)]
        resume_all: bool,
    },
    /// Resume paused partitions (all by default).
    #[command(after_help = "Example:\n  lift stream resume orders")]
    Resume {
        /// The stream.
        name: String,
        /// A partition (repeatable); default all.
        #[arg(long = "partition", short = 'p')]
        partitions: Vec<i32>,
    },
    /// Make partitions read-only (all by default), or writable again with --off.
    #[command(
        after_help = "Example:\n  lift stream readonly orders\n  lift stream readonly orders --off"
    )]
    Readonly {
        /// The stream.
        name: String,
        /// A partition (repeatable); default all.
        #[arg(long = "partition", short = 'p')]
        partitions: Vec<i32>,
        /// Writable again.
        #[arg(long)]
        off: bool,
    },
}

/// `lift stream create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The stream's name.
    pub name: String,
    /// The NATS subject it records (default: the name).
    #[arg(long)]
    pub subject: Option<String>,
    /// Partitions.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub partitions: i32,
    /// Replicas per partition; -1: every broker.
    #[arg(long, short = 'r', default_value_t = 1)]
    pub replication_factor: i32,
    /// Queue group: streams in one group share the subject's messages.
    #[arg(long)]
    pub group: Option<String>,
    /// Retention by total bytes per partition.
    #[arg(long)]
    pub retention_max_bytes: Option<i64>,
    /// Retention by messages per partition.
    #[arg(long)]
    pub retention_max_messages: Option<i64>,
    /// Retention by age, e.g. 24h.
    #[arg(long, value_parser = duration)]
    pub retention_max_age: Option<Duration>,
    /// How often retention and compaction run, e.g. 5m.
    #[arg(long, value_parser = duration)]
    pub cleaner_interval: Option<Duration>,
    /// Segment size limit in bytes.
    #[arg(long)]
    pub segment_max_bytes: Option<i64>,
    /// Segment age limit, e.g. 1h.
    #[arg(long, value_parser = duration)]
    pub segment_max_age: Option<Duration>,
    /// Keep only the newest message per key.
    #[arg(long)]
    pub compact: Option<bool>,
    /// Compaction parallelism (accepted for compatibility).
    #[arg(long)]
    pub compact_max_goroutines: Option<i32>,
    /// Pause partitions idle this long, e.g. 1h.
    #[arg(long, value_parser = duration)]
    pub auto_pause_time: Option<Duration>,
    /// No auto-pause while a subscriber is attached.
    #[arg(long)]
    pub auto_pause_disable_if_subscribers: Option<bool>,
    /// Minimum in-sync replicas for a commit.
    #[arg(long)]
    pub min_isr: Option<i32>,
    /// Optimistic concurrency control: publishes may state an expected offset.
    #[arg(long)]
    pub concurrency_control: Option<bool>,
    /// Encryption at rest (the servers need the key).
    #[arg(long)]
    pub encryption: Option<bool>,
}

/// An ack policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acks {
    /// Once the leader stored it.
    Leader,
    /// Once every in-sync replica stored it.
    All,
    /// No ack.
    None,
}

/// `lift pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The stream (not with --subject).
    #[arg(required_unless_present = "subject")]
    pub stream: Option<String>,
    /// The value; without it, one message per line of stdin. With --count, a template where
    /// `{n}` is the message's number.
    pub value: Option<String>,
    /// Publish a plain NATS message on this subject (PublishToSubject) instead.
    #[arg(long, conflicts_with_all = ["partition", "expected_offset"])]
    pub subject: Option<String>,
    /// The message key (then the partition is chosen by key, unless --partition).
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// A header, name=value (repeatable).
    #[arg(long = "header", short = 'H', value_parser = header)]
    pub headers: Vec<(String, String)>,
    /// The partition.
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// When the ack comes.
    #[arg(long, value_enum, default_value_t = Acks::Leader)]
    pub ack_policy: Acks,
    /// Optimistic concurrency: the offset the (first) message must get.
    #[arg(long)]
    pub expected_offset: Option<i64>,
    /// Publish the value this many times (with `{n}` in it replaced by 0, 1, …).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// How long to wait for each ack.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub ack_wait: Duration,
}

fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not name=value")),
    }
}

/// Output format of `lift sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// The stream.
    pub stream: String,
    /// The partition.
    #[arg(long, short = 'p', default_value_t = 0)]
    pub partition: i32,
    /// Start at the oldest message.
    #[arg(long, group = "start")]
    pub earliest: bool,
    /// Start at the newest message.
    #[arg(long, group = "start")]
    pub latest: bool,
    /// Start at this offset.
    #[arg(long, group = "start")]
    pub offset: Option<i64>,
    /// Start at messages received this long ago, e.g. 5m.
    #[arg(long, group = "start", value_parser = duration)]
    pub since: Option<Duration>,
    /// Start at messages received at or after this time (RFC 3339, e.g. 2026-12-01T10:00:00Z).
    #[arg(long, group = "start", value_parser = time)]
    pub time: Option<std::time::SystemTime>,
    /// Stop after this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Keep waiting for new messages (the default when starting with new messages only);
    /// otherwise stop at the newest message there was at the start.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Newest first, from the newest (or --offset) down.
    #[arg(long, conflicts_with = "follow")]
    pub reverse: bool,
    /// Read from any in-sync replica, not only the leader.
    #[arg(long)]
    pub read_isr_replica: bool,
    /// Print only the values, as they are.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
}

fn time(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e} (write e.g. 2026-12-01T10:00:00Z)"))
}

/// `lift cursor`.
#[derive(Debug, Subcommand)]
pub enum CursorCmd {
    /// A cursor's offset (-1: none).
    #[command(after_help = "Example:\n  lift cursor get my-consumer orders --partition 0")]
    Get {
        /// The cursor id.
        id: String,
        /// The stream.
        stream: String,
        /// The partition.
        #[arg(long, short = 'p', default_value_t = 0)]
        partition: i32,
    },
    /// Store a cursor's offset.
    #[command(after_help = "Example:\n  lift cursor set my-consumer orders 41 --partition 0")]
    Set {
        /// The cursor id.
        id: String,
        /// The stream.
        stream: String,
        /// The offset (the last message consumed).
        offset: i64,
        /// The partition.
        #[arg(long, short = 'p', default_value_t = 0)]
        partition: i32,
    },
}

/// `lift group`.
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// The consumer groups: coordinator, epoch and members.
    #[command(after_help = "Example:\n  lift group ls")]
    Ls,
    /// A group's members, their assignments, and the group's lag per partition.
    #[command(after_help = "Example:\n  lift group info workers")]
    Info {
        /// The group.
        group: String,
    },
}

/// `lift cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// The brokers, the metadata leader, and partition counts.
    #[command(after_help = "Example:\n  lift cluster info")]
    Info,
    /// Exit 0 when every partition has a leader and a full ISR; else 3 (under-replicated) or
    /// 4 (offline), with a one-line reason.
    #[command(after_help = "Example:\n  lift cluster health && echo healthy")]
    Health,
}

/// `lift context`.
#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// Add (or replace) a context with the connection flags given, and make it current.
    #[command(
        after_help = "Example:\n  lift context add prod -s broker1:9292 -s broker2:9292 --tls-ca ca.pem"
    )]
    Add {
        /// Its name.
        name: String,
    },
    /// Make a context current.
    #[command(after_help = "Example:\n  lift context use prod")]
    Use {
        /// Its name.
        name: String,
    },
    /// List the contexts.
    Ls,
    /// Remove a context.
    Rm {
        /// Its name.
        name: String,
    },
}

/// `lift bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The stream to use.
    pub stream: String,
    /// Create the stream first (deleting one of that name).
    #[arg(long)]
    pub create: bool,
    /// Partitions of a created stream; publishers spread over them.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replication factor of a created stream.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Subscribers (each reads every partition).
    #[arg(long, default_value_t = 0)]
    pub subscribers: u32,
    /// Messages per publisher (unless --duration).
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub messages: u64,
    /// Publish for this long instead of a message count, e.g. 30s.
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages per second per publisher (0: as fast as acks allow). With a rate, latency
    /// counts from when each message was due, not when it was sent (no coordinated omission).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// One publish at a time, each waiting for its ack (default: pipelined, PublishAsync).
    #[arg(long)]
    pub sync: bool,
    /// Messages in flight per publisher when pipelined.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// The ack policy.
    #[arg(long, value_enum, default_value_t = Acks::Leader)]
    pub ack_policy: Acks,
    /// Print the results as CSV (one row per client, then the total).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}
