//! A broker whose disk fills up: publishers are told, nothing hangs, and the broker keeps
//! serving reads. The data folder is a small tmpfs, which needs root (CAP_SYS_ADMIN); where it
//! cannot be mounted the test says so and checks nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use liftbridge_proto::api::*;
use tonic::Code;

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = std::env::temp_dir().join(format!("lift-small-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a broker that a failed test left running may still hold files there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A server keeping its data on `disk`, with the free-space floor `min_free` (0: off), and a
/// client; also the data folder.
async fn start_on(
    disk: &SmallDisk,
    min_free: u64,
) -> (
    liftbridged::Running,
    api_client::ApiClient<tonic::transport::Channel>,
    PathBuf,
) {
    let data = disk.path().join("data");
    let mut cfg = config(&data);
    cfg.broker.cursors.partitions = 0;
    cfg.broker.min_free_bytes = min_free;
    let running = liftbridged::start(cfg, quiet())
        .await
        .expect("server starts");
    let c = api_client::ApiClient::connect(format!("http://{}", running.grpc_addr()))
        .await
        .unwrap();
    (running, c, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_with_an_error_and_keeps_serving_reads() {
    let Some(disk) = SmallDisk::mount("12m") else {
        eprintln!("skipped: a tmpfs cannot be mounted here (needs root)");
        return;
    };
    // The guard off: this test is about the disk really filling up.
    let (running, mut c, _) = start_on(&disk, 0).await;
    c.create_stream(stream("fill", "fill")).await.unwrap();
    // 256 KiB a message: the disk is full within 48 of them.
    let (stored, e) = publish_until_refused(&mut c, "fill").await;
    // Told at once, not left waiting for an ack that never comes.
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("could not store"), "{e:?}");
    assert!(stored > 0);
    // Reads still work: everything acked is there.
    let mut s = subscribe(&mut c, sub("fill", StartPosition::Earliest))
        .await
        .unwrap();
    for offset in 0..stored {
        assert_eq!(next(&mut s).await.unwrap().offset, offset);
    }
    running.shutdown().await;
    drop(disk);
}

/// Publishes 256 KiB values until the server refuses one; returns how many it took and the
/// refusal.
async fn publish_until_refused(
    c: &mut api_client::ApiClient<tonic::transport::Channel>,
    stream: &str,
) -> (i64, tonic::Status) {
    let mut stored = 0;
    // 88 × 256 KiB = 22 MiB: past the floor with room for the guard's one-second look, and
    // past a full 12 MiB disk.
    for _ in 0..88 {
        let mut req = tonic::Request::new(PublishRequest {
            stream: stream.into(),
            value: vec![b'd'; 256 * 1024].into(),
            expected_offset: -1,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(10));
        match c.publish(req).await {
            Ok(_) => stored += 1,
            Err(e) => return (stored, e),
        }
        // The guard looks once a second: give it a chance to see the space go.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("88 publishes of 256 KiB were all taken by a disk of at most 24 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_publishes_are_refused_until_space_is_freed() {
    let Some(disk) = SmallDisk::mount("24m") else {
        eprintln!("skipped: a tmpfs cannot be mounted here (needs root)");
        return;
    };
    let (running, mut c, data) = start_on(&disk, 12 * 1024 * 1024).await;
    c.create_stream(stream("big", "big")).await.unwrap();
    let (stored, e) = publish_until_refused(&mut c, "big").await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("bytes free"), "{e:?}");
    assert!(e.message().contains(&data.display().to_string()), "{e:?}");
    assert!(stored > 0);
    // Refused before the disk was full: there is still room, and reads go on.
    let free = {
        let out = Command::new("df")
            .arg("--output=avail")
            .arg("-B1")
            .arg(disk.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert!(free > 4 * 1024 * 1024, "only {free} bytes left");
    let mut s = subscribe(&mut c, sub("big", StartPosition::Earliest))
        .await
        .unwrap();
    for offset in 0..stored {
        assert_eq!(next(&mut s).await.unwrap().offset, offset);
    }
    drop(s);
    // Freeing space (deleting the stream) lets publishes in again.
    c.delete_stream(DeleteStreamRequest { name: "big".into() })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.create_stream(stream("again", "again")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    loop {
        let mut req = tonic::Request::new(PublishRequest {
            stream: "again".into(),
            value: "small".into(),
            expected_offset: -1,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(5));
        match c.publish(req).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(tokio::time::Instant::now() < deadline, "still refused");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    running.shutdown().await;
    drop(disk);
}
