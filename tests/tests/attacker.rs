//! An attacker against a locked-down broker: TLS, client certificates and Casbin authorization
//! on the API. `mallory` may create, publish on and subscribe to `spy` and `spy2` only; `alice`
//! owns `payroll`. Each test tries a way around the grants and sees it refused: every call on
//! alice's stream, her subject through a stream of mallory's, the brokers' namespace through a
//! stream subject, PublishToSubject, an `ackInbox` (over the API and in a NATS envelope), another
//! stream's ack, and guessing the inboxes the broker makes. The NATS side (an application user
//! against every broker subject, before and after authenticating) is in `nats_permissions.rs`.

mod common;

use std::path::PathBuf;

use common::*;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const MODEL: &str = "[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

const POLICY: &str = "p, alice, *, FetchMetadata
p, alice, payroll, CreateStream
p, alice, payroll, Publish
p, alice, payroll, Subscribe
p, alice, payroll, PublishToSubject
p, mallory, *, FetchMetadata
p, mallory, spy, CreateStream
p, mallory, spy, Publish
p, mallory, spy, Subscribe
p, mallory, spy, PublishToSubject
p, mallory, spy2, CreateStream
p, mallory, spy2, Publish
p, mallory, spy2, Subscribe
p, mallory, subject:spy.all, CreateStream
p, mallory, liftbridge-default.raft.metadata.join, PublishToSubject
p, mallory, payroll, Unused
p, alice, spy, Subscribe
p, alice, alice-readers, JoinConsumerGroup
";

struct Locked {
    _dir: tempfile::TempDir,
    ca: String,
    certs: Vec<(String, String, String)>,
    srv: TestServer,
}

impl Locked {
    async fn start() -> Locked {
        let dir = tempfile::tempdir().unwrap();
        let ca = testkit::TestCa::new("liftbridge test CA");
        ca.write(dir.path(), &["server"]);
        let certs = ["alice", "mallory"]
            .iter()
            .map(|cn| {
                let leaf = ca.leaf(cn);
                (cn.to_string(), leaf.cert, leaf.key)
            })
            .collect();
        let path = |n: &str| -> PathBuf { dir.path().join(n) };
        std::fs::write(path("model.conf"), MODEL).unwrap();
        std::fs::write(path("policy.csv"), POLICY).unwrap();
        let sec = liftbridged::ApiSecurity {
            cert_and_key: Some((path("server.pem"), path("server.key"))),
            client_ca: Some(path("ca.pem")),
            authz: Some((path("model.conf"), path("policy.csv"))),
        };
        let srv = TestServer::start_with(|c| c.api_security = sec).await;
        Locked {
            ca: ca.pem().to_owned(),
            certs,
            srv,
            _dir: dir,
        }
    }

    async fn client(&self, cn: &str) -> ApiClient<Channel> {
        let (_, c, k) = self.certs.iter().find(|(n, _, _)| n == cn).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost")
            .identity(Identity::from_pem(c, k));
        let ch = Endpoint::from_shared(format!("https://{}", self.srv.running().grpc_addr()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        ApiClient::new(ch)
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, what: &str) {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e:?}");
}

/// A stream's subject is authorized as well as its name: mallory cannot attach her stream to
/// alice's subject, nor to the brokers' namespace or a wildcard covering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cannot_capture_another_streams_subject() {
    let l = Locked::start().await;
    let mut alice = l.client("alice").await;
    let mut mallory = l.client("mallory").await;
    alice
        .create_stream(stream("payroll", "payroll"))
        .await
        .unwrap();
    let e = mallory
        .create_stream(stream("spy", "payroll"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "The client is not authorized to call CreateStream on resource subject:payroll"
    );
    for subject in [
        ">",
        "*.>",
        "liftbridge-default.>",
        "liftbridge-default.*.*.replicate",
        "*.raft.metadata.join",
        "liftbridge-default.ack.x",
    ] {
        refused(
            mallory.create_stream(stream("spy2", subject)).await,
            Code::InvalidArgument,
            subject,
        );
    }
    // Her own grants still work: a stream on its own name, and on a subject granted as such.
    mallory.create_stream(stream("spy", "spy")).await.unwrap();
    mallory
        .create_stream(stream("spy2", "spy.all"))
        .await
        .unwrap();
    // alice's publish is acked by her own stream.
    let ack = publish(&mut alice, "payroll", "salary").await;
    assert_eq!((ack.stream.as_str(), ack.offset), ("payroll", 0));
    l.srv.stop().await;
}

/// PublishToSubject and client-given ack inboxes never reach the brokers' namespace, even
/// when the policy grants the subject; an inbox must be a subject the caller may publish on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_publish_into_the_brokers_namespace() {
    let l = Locked::start().await;
    let mut mallory = l.client("mallory").await;
    mallory.create_stream(stream("spy", "spy")).await.unwrap();
    refused(
        mallory
            .publish_to_subject(PublishToSubjectRequest {
                subject: "liftbridge-default.raft.metadata.join".into(),
                value: b"forged".to_vec().into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "PublishToSubject into the namespace",
    );
    for inbox in [
        "liftbridge-default.ack.x",
        "liftbridge-default.raft.metadata.join",
        "spy.*",
        ">",
    ] {
        refused(
            mallory
                .publish(PublishRequest {
                    stream: "spy".into(),
                    value: b"x".to_vec().into(),
                    ack_inbox: inbox.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            inbox,
        );
        refused(
            mallory
                .publish_to_subject(PublishToSubjectRequest {
                    subject: "spy".into(),
                    value: b"x".to_vec().into(),
                    ack_inbox: inbox.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            inbox,
        );
    }
    // An inbox on a subject she may not publish on.
    let e = mallory
        .publish(PublishRequest {
            stream: "spy".into(),
            value: b"x".to_vec().into(),
            ack_inbox: "payroll".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        e.message(),
        "The client is not authorized to call PublishToSubject on resource payroll"
    );
    // One she may: accepted.
    mallory
        .publish(PublishRequest {
            stream: "spy".into(),
            value: b"x".to_vec().into(),
            ack_inbox: "spy".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    l.srv.stop().await;
}

/// Without API authorization the namespace is still closed to clients, unless the operator
/// opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_is_closed_without_authorization_and_opens_on_request() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    refused(
        c.create_stream(stream("all", ">")).await,
        Code::InvalidArgument,
        "a stream on >",
    );
    refused(
        c.publish_to_subject(PublishToSubjectRequest {
            subject: "liftbridge-default.raft.metadata.join".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "PublishToSubject into the namespace",
    );
    srv.stop().await;
    let srv = TestServer::start_with(|c| c.broker.streams.namespace_open = true).await;
    let mut c = srv.client().await;
    c.create_stream(stream("all", ">")).await.unwrap();
    srv.stop().await;
}

/// Two streams on one subject: each publish is acked by the stream it was for, never the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_comes_from_the_stream_the_publish_was_for() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("first", "shared")).await.unwrap();
    c.create_stream(stream("second", "shared")).await.unwrap();
    for i in 0..10 {
        // Both streams record every message on the subject.
        for (k, name) in ["first", "second"].into_iter().enumerate() {
            let ack = publish(&mut c, name, "x").await;
            assert_eq!(
                (ack.stream.as_str(), ack.offset),
                (name, 2 * i + k as i64),
                "{ack:?}"
            );
        }
    }
    srv.stop().await;
}

/// The inboxes the broker makes for API publishes cannot be guessed from one another: each is
/// a fresh random token, not a counter under a per-process prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_made_ack_inboxes_are_unpredictable() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("s", "s")).await.unwrap();
    let inboxes: Vec<String> = [
        publish(&mut c, "s", "1").await,
        publish(&mut c, "s", "2").await,
    ]
    .into_iter()
    .map(|a| a.ack_inbox)
    .collect();
    let tail = |s: &str| s.rsplit('.').next().unwrap_or_default().to_owned();
    for i in &inboxes {
        assert!(
            i.starts_with("liftbridge-default.ack."),
            "{i}: an inbox inside the namespace"
        );
        assert!(tail(i).len() >= 22, "{i}: at least 128 random bits");
    }
    let (a, b) = (tail(&inboxes[0]), tail(&inboxes[1]));
    let shared = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    assert!(shared < 8, "{a} and {b} share a prefix of {shared}");
    srv.stop().await;
}

/// PublishAsync: each message is answered once, by the stream it was for, though another
/// stream on the same subject acks the same session inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_async_ack_comes_from_the_stream_the_publish_was_for() {
    use futures_util::StreamExt;
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("first", "shared")).await.unwrap();
    c.create_stream(stream("second", "shared")).await.unwrap();
    let reqs: Vec<PublishRequest> = (0..5)
        .map(|i| PublishRequest {
            stream: "second".into(),
            value: b"x".to_vec().into(),
            correlation_id: format!("c{i}"),
            ack_policy: AckPolicy::Leader as i32,
            ..Default::default()
        })
        .collect();
    let mut out = c
        .publish_async(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Ok(Some(r)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), out.next()).await
    {
        answers.push(r.unwrap());
    }
    let mut cids: Vec<String> = answers.iter().map(|r| r.correlation_id.clone()).collect();
    cids.sort();
    assert_eq!(cids, ["c0", "c1", "c2", "c3", "c4"], "{answers:?}");
    for r in &answers {
        assert_eq!(
            r.ack.as_ref().map(|a| a.stream.as_str()),
            Some("second"),
            "{r:?}"
        );
    }
    srv.stop().await;
}

/// A plain NATS client's envelope names its ack inbox: the broker never publishes an ack into
/// its own namespace (other than its own ack inboxes) or onto a wildcard for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_never_go_into_the_brokers_namespace_for_a_nats_client() {
    use futures_util::StreamExt;
    use natsbridge::payload;
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.create_stream(stream("env", "env")).await.unwrap();
    let nc = srv.nats().await;
    let mut spy = nc.subscribe("liftbridge-default.>").await.unwrap();
    let mut mine = nc.subscribe("my.acks").await.unwrap();
    nc.flush().await.unwrap();
    let envelope = |inbox: &str, cid: &str| {
        let msg = Message {
            value: b"v".to_vec().into(),
            ack_inbox: inbox.into(),
            correlation_id: cid.into(),
            ack_policy: AckPolicy::Leader as i32,
            ..Default::default()
        };
        payload::encode(&msg, false)
    };
    for (inbox, cid) in [
        ("liftbridge-default.notify.zzz", "1"),
        ("liftbridge-default.raft.metadata.join", "2"),
        ("my.*", "3"),
        ("my.acks", "4"),
    ] {
        nc.publish("env", envelope(inbox, cid)).await.unwrap();
    }
    nc.flush().await.unwrap();
    // Acks go out in order: once the last one arrives, the others would have.
    let m = tokio::time::timeout(std::time::Duration::from_secs(10), mine.next())
        .await
        .expect("the allowed ack")
        .unwrap();
    let ack: Ack = payload::decode(&m.payload).unwrap();
    assert_eq!(ack.correlation_id, "4");
    nc.flush().await.unwrap();
    while let Ok(Some(m)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), spy.next()).await
    {
        if let Ok(a) = payload::decode::<Ack>(&m.payload) {
            assert!(
                a.correlation_id.is_empty(),
                "an ack on {}: {a:?}",
                m.subject
            );
        }
    }
    srv.stop().await;
}

/// Every call that names alice's stream, or a group, is refused to mallory, and changes
/// nothing: what alice published stays hers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_another_clients_stream_is_refused() {
    use futures_util::StreamExt;
    let l = Locked::start().await;
    let mut alice = l.client("alice").await;
    let mut mallory = l.client("mallory").await;
    alice
        .create_stream(stream("payroll", "payroll"))
        .await
        .unwrap();
    publish(&mut alice, "payroll", "salary").await;
    let denied = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    };
    denied(
        mallory
            .subscribe(sub("payroll", StartPosition::Earliest))
            .await
            .map(|_| ()),
        "Subscribe",
    );
    denied(
        mallory
            .publish(PublishRequest {
                stream: "payroll".into(),
                value: b"forged".to_vec().into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "Publish",
    );
    denied(
        mallory
            .publish_to_subject(PublishToSubjectRequest {
                subject: "payroll".into(),
                value: b"forged".to_vec().into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "PublishToSubject",
    );
    denied(
        mallory
            .fetch_partition_metadata(FetchPartitionMetadataRequest {
                stream: "payroll".into(),
                partition: 0,
            })
            .await
            .map(|_| ()),
        "FetchPartitionMetadata",
    );
    denied(
        mallory
            .set_cursor(SetCursorRequest {
                stream: "payroll".into(),
                partition: 0,
                cursor_id: "c".into(),
                offset: 0,
            })
            .await
            .map(|_| ()),
        "SetCursor",
    );
    denied(
        mallory
            .fetch_cursor(FetchCursorRequest {
                stream: "payroll".into(),
                partition: 0,
                cursor_id: "c".into(),
            })
            .await
            .map(|_| ()),
        "FetchCursor",
    );
    denied(
        mallory
            .delete_stream(DeleteStreamRequest {
                name: "payroll".into(),
            })
            .await
            .map(|_| ()),
        "DeleteStream",
    );
    denied(
        mallory
            .pause_stream(PauseStreamRequest {
                name: "payroll".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "PauseStream",
    );
    denied(
        mallory
            .set_stream_readonly(SetStreamReadonlyRequest {
                name: "payroll".into(),
                partitions: vec![],
                readonly: true,
            })
            .await
            .map(|_| ()),
        "SetStreamReadonly",
    );
    denied(
        mallory
            .join_consumer_group(JoinConsumerGroupRequest {
                group_id: "payroll-readers".into(),
                consumer_id: "m".into(),
                streams: vec!["payroll".into()],
            })
            .await
            .map(|_| ()),
        "JoinConsumerGroup",
    );
    // PublishAsync: refused message by message, nothing published.
    let mut out = mallory
        .publish_async(futures_util::stream::iter(vec![PublishRequest {
            stream: "payroll".into(),
            value: b"forged".to_vec().into(),
            correlation_id: "1".into(),
            ack_policy: AckPolicy::Leader as i32,
            ..Default::default()
        }]))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), out.next())
        .await
        .expect("an answer")
        .expect("one answer")
        .unwrap();
    assert_eq!(
        r.async_error.map(|e| e.code),
        Some(publish_async_error::Code::PermissionDenied as i32)
    );
    // alice's stream holds her messages alone: the next after hers is her next one.
    publish(&mut alice, "payroll", "bonus").await;
    let mut s = subscribe(&mut alice, sub("payroll", StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(&next(&mut s).await.unwrap().value[..], b"salary");
    assert_eq!(&next(&mut s).await.unwrap().value[..], b"bonus");
    l.srv.stop().await;
}

/// A stream's partition n lives on `<subject>.<n>`: a stream on the namespace itself (or on a
/// wildcard that matches it) with more than one partition would put its partitions inside the
/// namespace, where clients never get a subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_subjects_never_land_in_the_namespace() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for subject in ["liftbridge-default", "*"] {
        let mut req = stream("parts", subject);
        req.partitions = 3;
        refused(
            c.create_stream(req).await,
            Code::InvalidArgument,
            &format!("{subject} with 3 partitions"),
        );
    }
    // One partition lives on the subject itself, outside the namespace.
    c.create_stream(stream("parts", "liftbridge-default"))
        .await
        .unwrap();
    srv.stop().await;
}

/// A group subscription names a group: a client allowed to read a stream, but not granted the
/// group, cannot subscribe as one of its members (which would end the member's subscription on
/// that partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_needs_the_group() {
    let l = Locked::start().await;
    let mut alice = l.client("alice").await;
    let mut mallory = l.client("mallory").await;
    mallory.create_stream(stream("spy", "spy")).await.unwrap();
    let joined = alice
        .join_consumer_group(JoinConsumerGroupRequest {
            group_id: "alice-readers".into(),
            consumer_id: "a".into(),
            streams: vec!["spy".into()],
        })
        .await
        .unwrap()
        .into_inner();
    refused(
        mallory
            .subscribe(SubscribeRequest {
                stream: "spy".into(),
                consumer: Some(Consumer {
                    group_id: "alice-readers".into(),
                    group_epoch: joined.epoch,
                    consumer_id: "m".into(),
                }),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Code::PermissionDenied,
        "a subscription as a member of alice's group",
    );
    l.srv.stop().await;
}
