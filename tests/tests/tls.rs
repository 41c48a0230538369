//! TLS, client certificates and authorization of the API, with certificates made here: TLS
//! works and plain clients are refused; with client authentication, a client without a
//! certificate is refused; every row of the authorization table is allowed and denied,
//! PublishAsync and the consumer-group calls included; a reload changes the verdict.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use liftbridge_proto::api::api_client::ApiClient;
use liftbridge_proto::api::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    clients: Vec<(String, String, String)>,
}

impl Pki {
    /// A CA, a server certificate for localhost and 127.0.0.1, and client certificates with
    /// the given common names.
    fn new(client_names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = testkit::TestCa::new("liftbridge test CA");
        ca.write(dir.path(), &["server"]);
        let clients = client_names
            .iter()
            .map(|cn| {
                let leaf = ca.leaf(cn);
                (cn.to_string(), leaf.cert, leaf.key)
            })
            .collect();
        Pki {
            dir,
            ca: ca.pem().to_owned(),
            clients,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn security(
        &self,
        client_auth: bool,
        authz: Option<(&Path, &Path)>,
    ) -> liftbridged::ApiSecurity {
        liftbridged::ApiSecurity {
            cert_and_key: Some((self.path("server.pem"), self.path("server.key"))),
            client_ca: client_auth.then(|| self.path("ca.pem")),
            authz: authz.map(|(m, p)| (m.to_owned(), p.to_owned())),
        }
    }

    async fn client(
        &self,
        srv: &TestServer,
        as_cn: Option<&str>,
    ) -> Result<ApiClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if let Some(cn) = as_cn {
            let (_, c, k) = self.clients.iter().find(|(n, _, _)| n == cn).unwrap();
            tls = tls.identity(Identity::from_pem(c, k));
        }
        let ch = Endpoint::from_shared(format!("https://{}", srv.running().grpc_addr()))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(ApiClient::new(ch))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_tls_clients_and_refuses_plain_ones() {
    let pki = Pki::new(&["client1"]);
    let sec = pki.security(false, None);
    let srv = TestServer::start_with(|c| c.api_security = sec).await;
    let mut c = pki.client(&srv, None).await.unwrap();
    c.create_stream(stream("s", "s")).await.unwrap();
    publish(&mut c, "s", "over tls").await;
    // A plain client gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{}", srv.running().grpc_addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = ApiClient::new(ch)
            .fetch_metadata(FetchMetadataRequest::default())
            .await;
        assert!(r.is_err(), "a plain client was served: {r:?}");
    }
    // liftbridge-client with TLS.
    let client = liftbridge_client::Client::builder([srv.running().grpc_addr().to_string()])
        .tls(liftbridge_client::ClientTls::new(pki.ca.clone()).domain("localhost"))
        .connect()
        .await
        .unwrap();
    let mut sub = client
        .subscribe(
            "s",
            liftbridge_client::SubscribeOptions::default()
                .start(liftbridge_client::StartAt::Earliest),
        )
        .await
        .unwrap();
    assert_eq!(&sub.next().await.unwrap().unwrap().value[..], b"over tls");
    client.close();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_authentication_a_client_needs_a_certificate_from_the_ca() {
    let pki = Pki::new(&["client1"]);
    let sec = pki.security(true, None);
    let srv = TestServer::start_with(|c| c.api_security = sec).await;
    let mut with_cert = pki.client(&srv, Some("client1")).await.unwrap();
    with_cert
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap();
    let refused = match pki.client(&srv, None).await {
        Err(_) => true,
        Ok(mut c) => c
            .fetch_metadata(FetchMetadataRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    // Another CA's certificate is refused too.
    let other = Pki::new(&["client1"]);
    let (_, c, k) = &other.clients[0];
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(c, k));
    let served = match Endpoint::from_shared(format!("https://{}", srv.running().grpc_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Err(_) => false,
        Ok(ch) => ApiClient::new(ch)
            .fetch_metadata(FetchMetadataRequest::default())
            .await
            .is_ok(),
    };
    assert!(!served, "a certificate from another CA was accepted");
    srv.stop().await;
}

const MODEL: &str = "[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

/// Liftbridge's sample policy, with the group calls added on group `g`.
const POLICY: &str = "p, client1, *, FetchMetadata
p, client1, foo, CreateStream
p, client1, foo, DeleteStream
p, client1, foo, PauseStream
p, client1, foo, Subscribe
p, client1, foo, PublishToSubject
p, client1, foo, Publish
p, client1, foo, SetStreamReadonly
p, client1, foo, FetchPartitionMetadata
p, client1, foo, SetCursor
p, client1, foo, FetchCursor
p, client1, bar, CreateStream
p, client1, g, JoinConsumerGroup
p, client1, g, FetchConsumerGroupAssignments
p, client1, g, ReportConsumerGroupCoordinator
p, client1, g, LeaveConsumerGroup
";

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, action: &str, object: &str) {
    let e = r.expect_err(action);
    assert_eq!(e.code(), Code::PermissionDenied, "{action}: {e:?}");
    assert_eq!(
        e.message(),
        format!("The client is not authorized to call {action} on resource {object}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_authorization_table_is_allowed_and_denied() {
    let pki = Pki::new(&["client1", "stranger"]);
    std::fs::write(pki.path("model.conf"), MODEL).unwrap();
    std::fs::write(pki.path("policy.csv"), POLICY).unwrap();
    let (m, p) = (pki.path("model.conf"), pki.path("policy.csv"));
    let sec = pki.security(true, Some((&m, &p)));
    let srv = TestServer::start_with(|c| c.api_security = sec).await;
    let mut c = pki.client(&srv, Some("client1")).await.unwrap();

    // Allowed on foo (the original's granted-resource test), and the group calls on g.
    c.fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap();
    c.create_stream(stream("foo", "foo")).await.unwrap();
    c.pause_stream(PauseStreamRequest {
        name: "foo".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&mut c, "foo", "one").await;
    c.publish_to_subject(PublishToSubjectRequest {
        subject: "foo".into(),
        value: b"two".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = subscribe(&mut c, sub("foo", StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(&next(&mut s).await.unwrap().value[..], b"one");
    partition_md(&mut c, "foo", 0).await;
    c.set_cursor(SetCursorRequest {
        stream: "foo".into(),
        partition: 0,
        cursor_id: "c".into(),
        offset: 0,
    })
    .await
    .unwrap();
    c.fetch_cursor(FetchCursorRequest {
        stream: "foo".into(),
        partition: 0,
        cursor_id: "c".into(),
    })
    .await
    .unwrap();
    c.set_stream_readonly(SetStreamReadonlyRequest {
        name: "foo".into(),
        partitions: vec![],
        readonly: false,
    })
    .await
    .unwrap();
    let j = c
        .join_consumer_group(JoinConsumerGroupRequest {
            group_id: "g".into(),
            consumer_id: "m".into(),
            streams: vec!["foo".into()],
        })
        .await
        .unwrap()
        .into_inner();
    c.fetch_consumer_group_assignments(FetchConsumerGroupAssignmentsRequest {
        group_id: "g".into(),
        consumer_id: "m".into(),
        epoch: j.epoch,
    })
    .await
    .unwrap();
    // Allowed: it reaches the judge, which has no other broker to move the group to.
    let e = c
        .report_consumer_group_coordinator(ReportConsumerGroupCoordinatorRequest {
            group_id: "g".into(),
            consumer_id: "m".into(),
            coordinator: j.coordinator.clone(),
            epoch: j.epoch,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, "No group coordinator candidates")
    );
    c.leave_consumer_group(LeaveConsumerGroupRequest {
        group_id: "g".into(),
        consumer_id: "m".into(),
    })
    .await
    .unwrap();

    // Denied on bar (the original's denied-resource test: only CreateStream there).
    c.create_stream(stream("bar", "bar")).await.unwrap();
    denied(
        c.pause_stream(PauseStreamRequest {
            name: "bar".into(),
            ..Default::default()
        })
        .await,
        "PauseStream",
        "bar",
    );
    denied(
        c.publish(PublishRequest {
            stream: "bar".into(),
            value: b"x".to_vec().into(),
            ..Default::default()
        })
        .await,
        "Publish",
        "bar",
    );
    denied(
        c.publish_to_subject(PublishToSubjectRequest {
            subject: "bar".into(),
            value: b"x".to_vec().into(),
            ..Default::default()
        })
        .await,
        "PublishToSubject",
        "bar",
    );
    denied(
        c.subscribe(sub("bar", StartPosition::Earliest)).await,
        "Subscribe",
        "bar",
    );
    denied(
        c.set_stream_readonly(SetStreamReadonlyRequest {
            name: "bar".into(),
            partitions: vec![],
            readonly: true,
        })
        .await,
        "SetStreamReadonly",
        "bar",
    );
    denied(
        c.fetch_partition_metadata(FetchPartitionMetadataRequest {
            stream: "bar".into(),
            partition: 0,
        })
        .await,
        "FetchPartitionMetadata",
        "bar",
    );
    denied(
        c.set_cursor(SetCursorRequest {
            stream: "bar".into(),
            partition: 0,
            cursor_id: "c".into(),
            offset: 0,
        })
        .await,
        "SetCursor",
        "bar",
    );
    denied(
        c.fetch_cursor(FetchCursorRequest {
            stream: "bar".into(),
            partition: 0,
            cursor_id: "c".into(),
        })
        .await,
        "FetchCursor",
        "bar",
    );
    denied(
        c.delete_stream(DeleteStreamRequest { name: "bar".into() })
            .await,
        "DeleteStream",
        "bar",
    );
    denied(
        c.join_consumer_group(JoinConsumerGroupRequest {
            group_id: "h".into(),
            consumer_id: "m".into(),
            streams: vec!["foo".into()],
        })
        .await,
        "JoinConsumerGroup",
        "h",
    );
    denied(
        c.leave_consumer_group(LeaveConsumerGroupRequest {
            group_id: "h".into(),
            consumer_id: "m".into(),
        })
        .await,
        "LeaveConsumerGroup",
        "h",
    );
    denied(
        c.fetch_consumer_group_assignments(FetchConsumerGroupAssignmentsRequest {
            group_id: "h".into(),
            consumer_id: "m".into(),
            epoch: 0,
        })
        .await,
        "FetchConsumerGroupAssignments",
        "h",
    );
    denied(
        c.report_consumer_group_coordinator(ReportConsumerGroupCoordinatorRequest {
            group_id: "h".into(),
            consumer_id: "m".into(),
            coordinator: "a".into(),
            epoch: 0,
        })
        .await,
        "ReportConsumerGroupCoordinator",
        "h",
    );

    // PublishAsync: the denied message gets its error and is not published.
    let reqs = vec![
        PublishRequest {
            stream: "bar".into(),
            value: b"denied".to_vec().into(),
            correlation_id: "1".into(),
            ack_policy: AckPolicy::Leader as i32,
            ..Default::default()
        },
        PublishRequest {
            stream: "foo".into(),
            value: b"allowed".to_vec().into(),
            correlation_id: "2".into(),
            ack_policy: AckPolicy::Leader as i32,
            ..Default::default()
        },
    ];
    let mut out = c
        .publish_async(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(10), out.next())
            .await
            .expect("answers")
            .expect("two answers")
            .unwrap();
        answers.insert(r.correlation_id.clone(), r);
    }
    let e = answers["1"].async_error.as_ref().expect("an error");
    assert_eq!(e.code, publish_async_error::Code::PermissionDenied as i32);
    assert!(answers["2"].ack.is_some());
    let md = partition_md(&mut c, "foo", 0).await;
    assert_eq!(md.newest_offset, 2, "one, two and allowed only");

    // Another client certificate, in no policy line: denied everything.
    let mut stranger = pki.client(&srv, Some("stranger")).await.unwrap();
    denied(
        stranger
            .fetch_metadata(FetchMetadataRequest::default())
            .await,
        "FetchMetadata",
        "*",
    );

    // The policy changes and is reloaded: the verdict changes; a broken policy leaves the
    // rules in force.
    std::fs::write(
        pki.path("policy.csv"),
        format!("{POLICY}p, stranger, *, FetchMetadata\n"),
    )
    .unwrap();
    srv.running().reload_authorization().await;
    stranger
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap();
    std::fs::remove_file(pki.path("policy.csv")).unwrap();
    srv.running().reload_authorization().await;
    stranger
        .fetch_metadata(FetchMetadataRequest::default())
        .await
        .unwrap();
    srv.stop().await;
}

#[test]
fn settings_that_cannot_work_stop_the_start_with_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    let cases: Vec<(&str, &str)> = vec![
        ("tls:\n  cert: /x.pem\n", "TLS needs the key too"),
        (
            "tls:\n  client:\n    auth:\n      enabled: true\n      ca: /ca.pem\n",
            "client authentication needs TLS",
        ),
        (
            "tls:\n  cert: /c\n  key: /k\n  client:\n    authz:\n      enabled: true\n      model: /m\n      policy: /p\n",
            "it needs TLS (tls.cert, tls.key) and client authentication",
        ),
        (
            "tls:\n  cert: /c\n  key: /k\n  client:\n    auth:\n      enabled: true\n",
            "needs the CA",
        ),
        (
            "nats:\n  tls:\n    cert: /c\n",
            "nats.tls.cert and nats.tls.key go together",
        ),
    ];
    for (yaml, says) in cases {
        std::fs::write(&file, yaml).unwrap();
        let flags = liftbridged::Flags {
            config: Some(file.clone()),
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let e = liftbridged::Config::load(&flags).unwrap_err().to_string();
        assert!(e.contains(says), "{yaml:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_without_a_certificate_is_an_error_at_start() {
    let pki = Pki::new(&[]);
    std::fs::write(pki.path("empty-ca.pem"), "not a certificate\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.api_security = liftbridged::ApiSecurity {
        cert_and_key: Some((pki.path("server.pem"), pki.path("server.key"))),
        client_ca: Some(pki.path("empty-ca.pem")),
        authz: None,
    };
    let e = liftbridged::start(cfg, quiet())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
}

/// The embedded NATS server with TLS and users from `nats.embedded.config`: the broker's own
/// connections go over TLS as its user, a client must trust the CA, and the broker serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_nats_server_speaks_tls_to_the_broker_and_its_clients() {
    let pki = Pki::new(&[]);
    let conf = pki.path("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\nauthorization {{ users = [ {{ user: liftbridge, password: brokerpw }} ] }}\n",
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_from(&liftbridged::Flags {
        embedded_nats_config: Some(conf),
        ..flags(dir.path())
    });
    cfg.broker.nats.user_password = Some(("liftbridge".into(), "brokerpw".into()));
    cfg.broker.nats.tls = Some(natsbridge::NatsTls {
        cert_and_key: None,
        ca: Some(pki.path("ca.pem")),
    });
    let running = liftbridged::start(cfg, quiet())
        .await
        .expect("server starts");
    let url = running.nats_url().to_owned();
    // A plain client does not get in; one that trusts the CA does, and its message is recorded.
    assert!(
        async_nats::ConnectOptions::with_user_and_password("liftbridge".into(), "brokerpw".into())
            .connect(url.as_str())
            .await
            .is_err()
    );
    let nc =
        async_nats::ConnectOptions::with_user_and_password("liftbridge".into(), "brokerpw".into())
            .add_root_certificates(pki.path("ca.pem"))
            .require_tls(true)
            .connect(url.as_str())
            .await
            .unwrap();
    let mut c = ApiClient::connect(format!("http://{}", running.grpc_addr()))
        .await
        .unwrap();
    c.create_stream(stream("sealed", "sealed")).await.unwrap();
    nc.publish("sealed", bytes::Bytes::from_static(b"over tls"))
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let mut s = subscribe(&mut c, sub("sealed", StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(&next(&mut s).await.unwrap().value[..], b"over tls");
    running.shutdown().await;
}
