//! Encryption at rest: values sealed in Liftbridge's format (decoded here by hand), plaintext to
//! subscribers, the choice kept with the stream across restarts and default changes, and clear
//! errors, never garbage, without the key or with another one.

mod common;

use std::time::Duration;

use common::*;
use liftbridge_proto::api::*;
use tonic::Code;

const KEY: &[u8] = b"t7w!z%C*F-JaNcRf";

fn with_key(key: Option<&[u8]>) -> impl FnOnce(&mut liftbridged::Config) {
    let key = key.map(|k| broker::MasterKey::new(k).unwrap());
    move |c: &mut liftbridged::Config| c.broker.encryption_key = key
}

fn encrypted(name: &str) -> CreateStreamRequest {
    let mut r = stream(name, name);
    r.encryption = Some(NullableBool { value: true });
    r
}

/// The stored values of a stopped server's partition, read from its log files.
fn stored_values(dir: &std::path::Path, stream: &str) -> Vec<Vec<u8>> {
    let log = commitlog::Log::open(
        dir.join("streams").join(stream).join("0"),
        commitlog::LogOptions::default(),
    )
    .unwrap();
    let mut r = log.reader(0, commitlog::Isolation::Uncommitted);
    let mut out = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        out.push(rec.value.to_vec());
    }
    log.close().unwrap();
    out
}

/// Opens a stored value by hand, following the format: `[L][wrapped DEK][nonce][ct][tag]`.
fn open_by_hand(stored: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit};
    let l = stored[0] as usize;
    assert_eq!(l, 40, "a 32-byte data key wraps to 40 bytes");
    let wrapped = &stored[1..1 + l];
    let nonce = &stored[1 + l..1 + l + 12];
    let sealed = &stored[1 + l + 12..];
    let kek = aes_kw::KekAes128::try_from(KEY).unwrap();
    let dek = kek.unwrap_with_padding_vec(wrapped).unwrap();
    assert_eq!(dek.len(), 32);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&dek).unwrap();
    cipher
        .decrypt(aes_gcm::Nonce::from_slice(nonce), sealed)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_sealed_on_disk_and_plain_to_subscribers() {
    let mut srv = TestServer::start_with(with_key(Some(KEY))).await;
    let mut c = srv.client().await;
    c.create_stream(encrypted("enc")).await.unwrap();
    c.create_stream(stream("plain", "plain")).await.unwrap();
    for i in 0..5 {
        let mut req = with_deadline(PublishRequest {
            stream: "enc".into(),
            key: format!("k{i}").into(),
            value: format!("secret-{i}").into(),
            ack_policy: AckPolicy::Leader as i32,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(10));
        c.publish(req).await.unwrap();
        publish(&mut c, "plain", &format!("open-{i}")).await;
    }
    let mut s = subscribe(&mut c, sub("enc", StartPosition::Earliest))
        .await
        .unwrap();
    for i in 0..5 {
        let m = next(&mut s).await.unwrap();
        assert_eq!(
            (m.offset, &m.key[..], &m.value[..]),
            (
                i,
                format!("k{i}").as_bytes(),
                format!("secret-{i}").as_bytes()
            )
        );
    }
    let mut p = subscribe(&mut c, sub("plain", StartPosition::Offset))
        .await
        .unwrap();
    assert_eq!(&next(&mut p).await.unwrap().value[..], b"open-0");

    // On disk: sealed, 69 bytes more, and it opens by hand with the master key.
    let dir = srv.dir.path().to_path_buf();
    let running = srv.running.take().unwrap();
    running.shutdown().await;
    let values = stored_values(&dir, "enc");
    assert_eq!(values.len(), 5);
    for (i, v) in values.iter().enumerate() {
        let plain = format!("secret-{i}");
        assert_eq!(v.len(), plain.len() + 69);
        assert!(!v.windows(6).any(|w| w == b"secret"));
        assert_eq!(open_by_hand(v), plain.as_bytes());
    }
    assert_eq!(stored_values(&dir, "plain")[0], b"open-0");

    // A restart with the key reads everything again.
    srv.restart_with(with_key(Some(KEY))).await;
    let mut c = srv.client().await;
    let mut s = subscribe(&mut c, sub("enc", StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(&next(&mut s).await.unwrap().value[..], b"secret-0");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_or_with_another_one_reads_fail_clearly() {
    // No key: an encrypted stream cannot be created.
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    let e = c.create_stream(encrypted("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("LIFTBRIDGE_ENCRYPTION_KEY"), "{e:?}");

    srv.restart_with(with_key(Some(KEY))).await;
    let mut c = srv.client().await;
    c.create_stream(encrypted("enc")).await.unwrap();
    publish(&mut c, "enc", "secret").await;

    // Another key: the value does not open, and the subscription says why.
    srv.restart_with(with_key(Some(b"0123456789abcdef0123456789abcdef")))
        .await;
    let mut c = srv.client().await;
    let mut s = subscribe(&mut c, sub("enc", StartPosition::Earliest))
        .await
        .unwrap();
    let e = next(&mut s).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message()
            .contains("does not unwrap under this LIFTBRIDGE_ENCRYPTION_KEY"),
        "{e:?}"
    );

    // No key at all: the broker does not open the partition, and says why; the server keeps
    // serving everything else.
    srv.restart_with(with_key(None)).await;
    let mut c = srv.client().await;
    let e = subscribe(&mut c, sub("enc", StartPosition::Earliest))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("LIFTBRIDGE_ENCRYPTION_KEY is not set"),
        "{e:?}"
    );
    c.create_stream(stream("plain", "plain")).await.unwrap();
    publish(&mut c, "plain", "fine").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choice_is_kept_with_the_stream_when_the_default_changes() {
    let mut srv = TestServer::start_with(|c| {
        with_key(Some(KEY))(c);
        c.broker.streams.encryption = true;
    })
    .await;
    let mut c = srv.client().await;
    c.create_stream(stream("by-default", "by-default"))
        .await
        .unwrap();
    let mut opted_out = stream("opted-out", "opted-out");
    opted_out.encryption = Some(NullableBool { value: false });
    c.create_stream(opted_out).await.unwrap();
    publish(&mut c, "by-default", "one").await;
    publish(&mut c, "opted-out", "two").await;
    // The default flips: the streams keep what they were created with.
    srv.restart_with(with_key(Some(KEY))).await;
    let mut c = srv.client().await;
    for (name, value) in [("by-default", "one"), ("opted-out", "two")] {
        let mut s = subscribe(&mut c, sub(name, StartPosition::Earliest))
            .await
            .unwrap();
        assert_eq!(&next(&mut s).await.unwrap().value[..], value.as_bytes());
    }
    let dir = srv.dir.path().to_path_buf();
    srv.running.take().unwrap().shutdown().await;
    assert_eq!(open_by_hand(&stored_values(&dir, "by-default")[0]), b"one");
    assert_eq!(stored_values(&dir, "opted-out")[0], b"two");
}
