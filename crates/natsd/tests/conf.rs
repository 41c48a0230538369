//! Every configuration key the embedded server is given: one nats-server accepts (checked with
//! `nats-server -t`) is either applied as nats-server applies it, or refused with an error
//! naming it. None is accepted and ignored.

use natsd::conf::{Value, authorization, check_keys, parse, tls};
use natsd::perms::{Permissions, Rule};
use natsd::{Auth, User};

/// What the embedded server must make of a file.
enum Want {
    /// Accepted, and this holds of what was read.
    Applied(fn(&Value)),
    /// Refused, the error naming this.
    Refused(&'static str),
}

fn allow(s: &[&str]) -> Rule {
    Rule {
        allow: s.iter().map(|s| s.to_string()).collect(),
        deny: Vec::new(),
    }
}

fn users(root: &Value) -> Vec<User> {
    match authorization(root).unwrap() {
        Some(Auth::Users(u)) => u,
        other => panic!("{other:?}"),
    }
}

fn single_user(root: &Value) {
    assert_eq!(
        authorization(root).unwrap(),
        Some(Auth::User {
            user: "u".into(),
            password: "p".into()
        })
    );
}

fn cases() -> Vec<(&'static str, Want)> {
    vec![
        (
            "authorization { username: u, pass: p }",
            Want::Applied(single_user),
        ),
        (
            "authorization { user: u, password: p }",
            Want::Applied(single_user),
        ),
        (
            "AUTHORIZATION { User: u, Password: p }",
            Want::Applied(single_user),
        ),
        (
            "authorization { users = [ { username: a, pass: b, permissions: { pub: \"x\", sub: { allow: [\"y\"] } } } ] }",
            Want::Applied(|r| {
                let u = users(r);
                assert_eq!(u[0].user, "a");
                assert_eq!(u[0].password, "b");
                assert_eq!(
                    u[0].permissions,
                    Some(Permissions {
                        publish: allow(&["x"]),
                        subscribe: allow(&["y"]),
                    })
                );
            }),
        ),
        (
            "authorization { default_permissions: { publish: \"x\" }, users = [ { user: a, password: b }, { user: c, password: d, permissions: { publish: \"z\" } } ] }",
            Want::Applied(|r| {
                let u = users(r);
                assert_eq!(u[0].permissions.as_ref().unwrap().publish, allow(&["x"]));
                assert_eq!(u[1].permissions.as_ref().unwrap().publish, allow(&["z"]));
            }),
        ),
        (
            "tls { cert_file: \"$DIR/server.pem\", key_file: \"$DIR/server.key\", ca_file: \"$DIR/ca.pem\", verify: yes }",
            Want::Applied(|r| assert!(tls(r).unwrap().unwrap().verify)),
        ),
        (
            "tls { cert_file: \"$DIR/server.pem\", key_file: \"$DIR/server.key\", verify: false }",
            Want::Applied(|r| assert!(!tls(r).unwrap().unwrap().verify)),
        ),
        (
            "PORT: 4333\nMax_Payload: 1024",
            Want::Applied(|r| {
                assert_eq!(r.get("port").and_then(Value::text), Some("4333"));
                assert_eq!(r.get("max_payload").and_then(Value::text), Some("1024"));
            }),
        ),
        (
            "authorization { user: u, password: p, timeout: 1 }",
            Want::Refused("authorization.timeout"),
        ),
        ("jetstream {}", Want::Refused("jetstream")),
        (
            "authorization { default_permissions: { publish: \"x\" }, user: u, password: p }",
            Want::Refused("default_permissions"),
        ),
        ("debug: true", Want::Refused("debug")),
        ("write_deadline: \"2s\"", Want::Refused("write_deadline")),
        ("max_control_line: 4096", Want::Refused("max_control_line")),
        (
            "no_auth_user: a\nauthorization { users = [ { user: a, password: b } ] }",
            Want::Refused("no_auth_user"),
        ),
        (
            "authorization { users = [ { user: a, password: b, permissions: { publish: \"x\", allow_responses: true } } ] }",
            Want::Refused("allow_responses"),
        ),
        (
            "authorization { users = [ { nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4 } ] }",
            Want::Refused("nkey"),
        ),
        (
            "tls { cert_file: \"$DIR/server.pem\", key_file: \"$DIR/server.key\", timeout: 2 }",
            Want::Refused("tls.timeout"),
        ),
        (
            "accounts { A { users = [ { user: a, password: b } ] } }",
            Want::Refused("accounts"),
        ),
    ]
}

/// Everything the embedded server reads from a file.
fn read(root: &Value) -> Result<(), String> {
    check_keys(root)?;
    authorization(root)?;
    tls(root)?;
    Ok(())
}

#[test]
fn every_key_is_applied_or_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::TestCa::new("conf test CA");
    ca.write(dir.path(), &["server"]);
    for (i, (text, want)) in cases().into_iter().enumerate() {
        let text = text.replace("$DIR", &dir.path().display().to_string());
        // nats-server accepts the file: the key is one it would honour.
        {
            let file = dir.path().join(format!("case{i}.conf"));
            std::fs::write(&file, &text).unwrap();
            let out = std::process::Command::new("nats-server")
                .arg("-t")
                .arg("-c")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "nats-server refuses {text:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let root = parse(&text).unwrap();
        match want {
            Want::Applied(check) => {
                read(&root).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                check(&root);
            }
            Want::Refused(key) => {
                let e = read(&root).expect_err(&text);
                assert!(e.contains(key), "{text:?}: {e}");
            }
        }
    }
}

/// Files nats-server refuses, or reads differently from their text, that the embedded server
/// must refuse too rather than start with less protection than the file asks for: `users` as a
/// map (nats-server: "Expected users field to be an array"; the embedded server ran with no
/// authentication at all), `permissions` as a string or list (nats-server: "Expected
/// permissions to be a map"; the embedded server gave that user every permission), and a
/// variable reference (nats-server takes the value from the environment; the embedded server
/// took the literal text `$NAME` as the password, which anyone who reads the file can send).
#[test]
fn files_read_otherwise_than_nats_server_reads_them_are_refused() {
    for text in [
        "authorization { users: { user: a, password: b } }",
        "authorization { users: [ { user: a, password: b, permissions: \"orders.>\" } ] }",
        "authorization { users: [ { user: a, password: b, permissions: [\"orders.>\"] } ] }",
        "authorization { users: [ { user: a, password: b, permissions: { publish: [[\"orders.>\"]] } } ] }",
        "authorization { user: a, password: $HOME }",
        "authorization { token: $HOME }",
        "authorization { users: [ { user: a, password: $HOME } ] }",
    ] {
        // Refused when read, or already when parsed.
        let r = parse(text)
            .map_err(|e| e.to_string())
            .and_then(|root| read(&root));
        assert!(r.is_err(), "{text:?} was accepted");
    }
    // A quoted '$' is a literal in nats-server too, and stays accepted.
    let root = parse("authorization { user: a, password: \"$ecret\" }").unwrap();
    read(&root).unwrap();
    // So is a bare bcrypt hash.
    let root = parse(
        "authorization { user: a, password: $2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy }",
    )
    .unwrap();
    read(&root).unwrap();
}

/// Passwords and tokens read from a file never show in a debug print of the settings (the
/// embedded server's settings are part of the broker's configuration, which may be printed).
#[test]
fn secrets_never_show_in_debug_output() {
    let root = parse(
        "authorization { users: [ { user: a, password: s3cretA }, { user: b, password: s3cretB, permissions: { publish: x } } ] }",
    )
    .unwrap();
    let users = format!("{:?}", authorization(&root).unwrap());
    let one = format!(
        "{:?}",
        authorization(&parse("authorization { user: u, password: s3cretU }").unwrap()).unwrap()
    );
    let token = format!(
        "{:?}",
        authorization(&parse("authorization { token: s3cretT }").unwrap()).unwrap()
    );
    for shown in [users, one, token] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
