//! Embeds a commit log: appends messages, commits some, reads them back forward and backward,
//! looks up by timestamp, and reopens.
//!
//! `cargo run -p commitlog --example embed -- [FOLDER]` (a temporary folder by default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use commitlog::{Isolation, Log, LogOptions, Message, Retention, SyncPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let given = std::env::args().nth(1);
    let dir = match &given {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("commitlog-example-{}", std::process::id())),
    };
    let opts = LogOptions {
        segment_max_bytes: 64 * 1024,
        sync: SyncPolicy::Always,
        retention: Retention {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            ..Retention::default()
        },
        ..LogOptions::default()
    };
    let log = Log::open(&dir, opts.clone())?;
    println!(
        "opened {} (clean shutdown last time: {})",
        dir.display(),
        log.recovery().clean_shutdown
    );

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
    let batch: Vec<Message> = (0..1000)
        .map(|i| {
            Message::new(format!("order #{i}"))
                .with_key(format!("customer-{}", i % 10))
                .with_timestamp(now + i)
                .with_header("source", "example")
        })
        .collect();
    // Ten batches of 100: a segment rolls before a batch that would not fit.
    let first = log.append(&batch[..100])?.first_offset;
    let mut last = first + 99;
    for chunk in batch[100..].chunks(100) {
        last = log.append(chunk)?.last_offset;
    }
    let at = commitlog::AppendInfo {
        first_offset: first,
        last_offset: last,
    };
    println!(
        "appended offsets {}..={}; the log has {} segments",
        at.first_offset,
        at.last_offset,
        log.segments().len()
    );

    // Only committed messages are visible to a committed reader.
    log.set_high_watermark(at.first_offset + 499)?;
    let mut reader = log.reader(at.first_offset, Isolation::Committed);
    let mut count = 0;
    while reader.try_next()?.is_some() {
        count += 1;
    }
    println!("a committed reader sees {count} of the 1000 new messages");

    let middle = log.offset_for_timestamp(now + 250)?;
    println!("first offset at or after timestamp now+250: {middle:?}");

    let mut newest_first = log.reverse_reader(i64::MAX, Isolation::Committed);
    if let Some(rec) = newest_first.next()? {
        println!(
            "newest committed: offset {} = {:?}",
            rec.offset,
            String::from_utf8_lossy(&rec.value)
        );
    }

    log.checkpoint_high_watermark()?;
    log.close()?;
    let log = Log::open(&dir, opts)?;
    println!(
        "reopened: offsets {}..={}, high watermark {}",
        log.oldest_offset(),
        log.newest_offset(),
        log.high_watermark()
    );
    log.close()?;
    if given.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
