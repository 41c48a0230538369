//! Every way a broker connection authenticates to the reference `nats-server`: user and
//! password, token, NKey, a credentials file in operator mode, and TLS with a client
//! certificate. The right credentials connect; the wrong ones or none are a clear error.

use std::path::Path;
use std::time::Duration;

use natsbridge::{Connection, NatsConfig, NatsError, NatsTls};
use testkit::RefNats;

fn config(s: &RefNats, scheme: &str) -> NatsConfig {
    NatsConfig {
        servers: vec![format!("{scheme}://127.0.0.1:{}", s.port())],
        connect_timeout: Duration::from_secs(3),
        ..NatsConfig::default()
    }
}

async fn works(cfg: &NatsConfig) {
    let c = Connection::connect(cfg, "auth-test")
        .await
        .expect("connects");
    let r = c
        .request(
            "_AUTH.roundtrip",
            bytes::Bytes::new(),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(r, Err(NatsError::NoResponders(_))), "{r:?}");
    c.close().await;
}

async fn refused(cfg: &NatsConfig) {
    let r = Connection::connect(cfg, "auth-test").await;
    assert!(
        matches!(r, Err(NatsError::Connect { .. })),
        "connected without the right credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_and_token() {
    let s = RefNats::start("authorization { user: broker, password: s3cret }\n");
    let mut cfg = config(&s, "nats");
    refused(&cfg).await;
    cfg.user_password = Some(("broker".into(), "wrong".into()));
    refused(&cfg).await;
    cfg.user_password = Some(("broker".into(), "s3cret".into()));
    works(&cfg).await;
    drop(s);

    let s = RefNats::start("authorization { token: t0ken }\n");
    let mut cfg = config(&s, "nats");
    refused(&cfg).await;
    cfg.token = Some("t0ken".into());
    works(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let other = nkeys::KeyPair::new_user();
    let s = RefNats::start(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ));
    let mut cfg = config(&s, "nats");
    refused(&cfg).await;
    cfg.nkey_seed = Some(other.seed().unwrap());
    refused(&cfg).await;
    cfg.nkey_seed = Some(user.seed().unwrap());
    works(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::TestCa::new("test CA");
    ca.write(dir.path(), &["server"]);
    // The broker's certificate, in the files a NATS client is given.
    let broker = ca.leaf("broker");
    std::fs::write(dir.path().join("client.pem"), broker.cert).unwrap();
    std::fs::write(dir.path().join("client.key"), broker.key).unwrap();
    let base = dir.path().to_owned();
    let p = |f: &str| base.join(f);
    let conf = format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    );
    let tls = |with_cert: bool, ca: &Path| NatsTls {
        cert_and_key: with_cert.then(|| (p("client.pem"), p("client.key"))),
        ca: Some(ca.to_owned()),
    };
    let ca_path = p("ca.pem");
    let s = RefNats::start(&conf);
    let mut cfg = config(&s, "tls");
    cfg.tls = Some(tls(false, &ca_path));
    refused(&cfg).await;
    cfg.tls = Some(tls(true, &ca_path));
    works(&cfg).await;
}

#[tokio::test]
async fn a_missing_credentials_file_is_a_clear_error() {
    let cfg = NatsConfig {
        servers: vec!["nats://127.0.0.1:1".into()],
        credentials_file: Some("/nonexistent/user.creds".into()),
        ..NatsConfig::default()
    };
    let e = Connection::connect(&cfg, "auth-test").await.unwrap_err();
    assert!(e.to_string().contains("/nonexistent/user.creds"), "{e}");
}

/// A JWT in NATS's form: `header.claims.signature`, base64url without padding, signed by
/// `issuer` with ed25519.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}{}", subject.len()),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = b64.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let sig = b64.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{sig}")
}

/// Operator mode, as a NATS deployment with accounts runs: the server trusts an operator, the
/// operator signed an account, the account signed the broker's user. The credentials file
/// (user JWT and seed) connects; a user the account never signed does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_connects_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let op_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let acc_jwt = jwt(
        &operator,
        &account.public_key(),
        "acc",
        serde_json::json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1},
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2
        }),
    );
    let user_claims = serde_json::json!({
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2
    });
    let user_jwt = jwt(&account, &user.public_key(), "broker", user_claims.clone());
    let dir = tempfile::tempdir().unwrap();
    let creds = |jwt: &str, seed: &str| {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    };
    let good = dir.path().join("broker.creds");
    std::fs::write(&good, creds(&user_jwt, &user.seed().unwrap())).unwrap();
    // A user signed by a key that is not the account's.
    let stranger = nkeys::KeyPair::new_user();
    let forger = nkeys::KeyPair::new_account();
    let bad = dir.path().join("stranger.creds");
    std::fs::write(
        &bad,
        creds(
            &jwt(&forger, &stranger.public_key(), "x", user_claims),
            &stranger.seed().unwrap(),
        ),
    )
    .unwrap();
    let conf = format!(
        "operator: {op_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {acc_jwt}\n}}\n",
        account.public_key()
    );
    let s = RefNats::start(&conf);
    let mut cfg = config(&s, "nats");
    refused(&cfg).await;
    cfg.credentials_file = Some(bad);
    refused(&cfg).await;
    cfg.credentials_file = Some(good);
    works(&cfg).await;
}

/// Credentials in a server URL are refused (the configuration has keys for them), and no
/// error repeats them.
#[tokio::test]
async fn credentials_in_a_server_url_are_refused_and_never_repeated() {
    for url in [
        "nats://lb:s3cretpw@127.0.0.1:1",
        "nats://s3cretpw@127.0.0.1:1",
    ] {
        let cfg = NatsConfig {
            servers: vec![url.into()],
            connect_timeout: Duration::from_millis(300),
            ..NatsConfig::default()
        };
        let e = Connection::connect(&cfg, "auth-test").await.unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("s3cretpw"), "{text}");
        assert!(text.contains("credentials"), "{text}");
    }
    assert_eq!(
        natsbridge::redact_url("nats://lb:s3cretpw@10.0.0.1:4222"),
        "nats://***@10.0.0.1:4222"
    );
    assert_eq!(
        natsbridge::redact_url("nats://10.0.0.1:4222"),
        "nats://10.0.0.1:4222"
    );
}

/// A password written unencoded with a `/`, `?` or `#` in it is still credentials: the URL is
/// refused and never shown with it (the user information was looked for only before the first
/// of those characters, so such a URL passed as credential-free and was logged whole).
#[tokio::test]
async fn a_password_with_a_slash_or_hash_is_still_refused_and_hidden() {
    for url in [
        "nats://lb:s3cret/pw@127.0.0.1:1",
        "nats://lb:s3cret#pw@127.0.0.1:1",
        "nats://lb:s3cret?pw@127.0.0.1:1",
    ] {
        assert!(natsbridge::url_has_credentials(url), "{url}");
        let shown = natsbridge::redact_url(url);
        assert!(!shown.contains("s3cret"), "{url} shown as {shown}");
        let cfg = NatsConfig {
            servers: vec![url.into()],
            connect_timeout: Duration::from_millis(300),
            ..NatsConfig::default()
        };
        let e = Connection::connect(&cfg, "auth-test").await.unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("credentials"), "{text}");
    }
}
