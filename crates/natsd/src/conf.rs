//! The subset of nats-server's configuration syntax the embedded server reads: `key: value`,
//! `key = value` or `key value`; maps in `{}`, arrays in `[]`, items separated by commas or
//! new lines; quoted or bare strings; `#` and `//` comments.
//!
//! Settings it applies: `host`/`net`, `port`, `listen`, `max_payload`, `max_connections`,
//! `max_subscriptions`, and `authorization` with a `token`, one `user`/`password`, or `users`
//! each with `permissions` (`publish`/`subscribe`, each a subject, a list, or
//! `{allow: […], deny: […]}`), and `tls` (`cert_file`, `key_file`, `ca_file`, `verify`).
//! Keys are compared without regard to case, as nats-server does, and the aliases it accepts
//! are read too (`username`, `pass`, `pub`, `sub`, `net`, `max_subs`); `default_permissions`
//! applies to the `users` that have none (beside a single user or a token, where nats-server
//! accepts it and applies nothing, it is refused). Any other key is
//! refused by [`check_keys`], naming it: a setting nats-server would honour must never be
//! accepted and silently ignored (an ignored `authorization` or `verify` leaves the server
//! open). A file nats-server refuses for its shape (`users` not a list, `permissions` not a map,
//! a rule that is not subjects) is refused too, and so is a bare `$NAME` variable reference, which
//! this reader does not resolve (a bare bcrypt hash, `$2a$…`, is a value, as in nats-server). A
//! syntax error is an error with its line.

use crate::perms::{Permissions, Rule};
use crate::server::{Auth, User};

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string, number or boolean, as written.
    Scalar(String),
    /// A list.
    List(Vec<Value>),
    /// A map, in file order.
    Map(Vec<(String, Value)>),
}

/// A syntax error, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ConfError {
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 32;

impl Lexer<'_> {
    fn err(&self, what: impl Into<String>) -> ConfError {
        ConfError {
            line: self.line,
            what: what.into(),
        }
    }

    /// Skips blanks and comments; with `newlines`, also line ends and commas.
    fn skip(&mut self, newlines: bool) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\n' if newlines => {
                    self.line += 1;
                    self.i += 1;
                }
                b',' if newlines => self.i += 1,
                b' ' | b'\t' | b'\r' => self.i += 1,
                b'#' => self.skip_line(),
                b'/' if self.s.get(self.i + 1) == Some(&b'/') => self.skip_line(),
                _ => return,
            }
        }
    }

    fn skip_line(&mut self) {
        while self.i < self.s.len() && self.s[self.i] != b'\n' {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// A quoted or bare string. A bare key ends at `:` or `=`; a bare value may hold them
    /// (`listen: 127.0.0.1:4222`).
    fn word(&mut self, key: bool) -> Result<String, ConfError> {
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\n' {
                        return Err(self.err("a quoted string runs past the end of its line"));
                    }
                    self.i += 1;
                }
                if self.i >= self.s.len() {
                    return Err(self.err("a quoted string is not closed"));
                }
                let w = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(w)
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(
                        self.s[self.i],
                        b' ' | b'\t' | b'\r' | b'\n' | b',' | b'{' | b'}' | b'[' | b']' | b'#'
                    )
                    && !(key && matches!(self.s[self.i], b':' | b'='))
                {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(self.err("expected a name or a value"));
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
        }
    }

    fn value(&mut self) -> Result<Value, ConfError> {
        self.skip(false);
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                self.nest()?;
                let m = self.map(Some(b'}'))?;
                self.depth -= 1;
                Ok(m)
            }
            Some(b'[') => {
                self.i += 1;
                self.nest()?;
                let mut items = Vec::new();
                loop {
                    self.skip(true);
                    match self.peek() {
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        None => return Err(self.err("a list is not closed with ]")),
                        _ => items.push(self.value()?),
                    }
                }
                self.depth -= 1;
                Ok(Value::List(items))
            }
            None | Some(b'\n') => Err(self.err("a key without a value")),
            Some(b'$') => {
                // A bare `$NAME` is a variable reference in nats-server (from the file or the
                // environment); taking it as literal text would make `password: $PASS` the
                // password "$PASS". Only a bare bcrypt hash (`$2a$...`) is literal there.
                let w = self.word(false)?;
                if w.starts_with("$2a$") {
                    Ok(Value::Scalar(w))
                } else {
                    Err(self.err(format!(
                        "variable references ({w}) are not implemented; write the value, or run nats-server"
                    )))
                }
            }
            _ => Ok(Value::Scalar(self.word(false)?)),
        }
    }

    fn nest(&mut self) -> Result<(), ConfError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        Ok(())
    }

    fn map(&mut self, close: Option<u8>) -> Result<Value, ConfError> {
        let mut entries = Vec::new();
        loop {
            self.skip(true);
            match (self.peek(), close) {
                (None, None) => return Ok(Value::Map(entries)),
                (None, Some(_)) => return Err(self.err("a map is not closed with }")),
                (Some(c), Some(want)) if c == want => {
                    self.i += 1;
                    return Ok(Value::Map(entries));
                }
                _ => {}
            }
            let key = self.word(true)?;
            self.skip(false);
            if matches!(self.peek(), Some(b':' | b'=')) {
                self.i += 1;
            }
            let v = self.value()?;
            entries.push((key.to_lowercase(), v));
        }
    }
}

/// Parses a whole file.
///
/// # Errors
/// [`ConfError`] for a syntax error.
pub fn parse(text: &str) -> Result<Value, ConfError> {
    Lexer {
        s: text.as_bytes(),
        i: 0,
        line: 1,
        depth: 0,
    }
    .map(None)
}

impl Value {
    /// The value under `key` (in any case, as nats-server reads keys), in a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under the first of `keys` present (a key and its aliases).
    fn get_any(&self, keys: &[&str]) -> Option<&Value> {
        keys.iter().find_map(|k| self.get(k))
    }

    /// The scalar's text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// A scalar as one item, or a list's scalars.
    fn strings(&self) -> Vec<String> {
        match self {
            Value::Scalar(s) => vec![s.clone()],
            Value::List(l) => l
                .iter()
                .filter_map(|v| v.text().map(str::to_owned))
                .collect(),
            Value::Map(_) => Vec::new(),
        }
    }
}

fn rule(v: &Value) -> Rule {
    match v {
        Value::Map(_) => Rule {
            allow: v.get("allow").map(Value::strings).unwrap_or_default(),
            deny: v.get("deny").map(Value::strings).unwrap_or_default(),
        },
        other => Rule {
            allow: other.strings(),
            deny: Vec::new(),
        },
    }
}

fn permissions(v: &Value) -> Permissions {
    Permissions {
        publish: v.get_any(&["publish", "pub"]).map(rule).unwrap_or_default(),
        subscribe: v
            .get_any(&["subscribe", "sub"])
            .map(rule)
            .unwrap_or_default(),
    }
}

/// The keys the embedded server implements, with nats-server's aliases, by where they appear.
const TOP_KEYS: &[&str] = &[
    "host",
    "net",
    "port",
    "listen",
    "max_payload",
    "max_connections",
    "max_subscriptions",
    "max_subs",
    "authorization",
    "tls",
];
const AUTHORIZATION_KEYS: &[&str] = &[
    "token",
    "user",
    "username",
    "password",
    "pass",
    "users",
    "default_permissions",
];
const USER_KEYS: &[&str] = &["user", "username", "password", "pass", "permissions"];
const PERMISSION_KEYS: &[&str] = &["publish", "pub", "subscribe", "sub"];
const RULE_KEYS: &[&str] = &["allow", "deny"];
const TLS_KEYS: &[&str] = &["cert_file", "key_file", "ca_file", "verify"];

/// Refuses every key the embedded server does not implement, naming it with its path (e.g.
/// `authorization.timeout`, `jetstream`): nats-server would honour it, so accepting it and
/// doing nothing would be a silent lie.
///
/// # Errors
/// The first such key.
pub fn check_keys(root: &Value) -> Result<(), String> {
    fn only(v: &Value, path: &str, known: &[&str]) -> Result<(), String> {
        let Value::Map(m) = v else {
            return Ok(());
        };
        for (k, _) in m {
            if !known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                return Err(format!(
                    "{at} is a nats-server setting the embedded server does not implement; \
                     remove it, or run nats-server"
                ));
            }
        }
        Ok(())
    }
    // A subject, or a list of subjects: anything else would be dropped from the rule, and an
    // empty rule allows everything.
    fn subjects(v: &Value, path: &str) -> Result<(), String> {
        let ok = match v {
            Value::Scalar(_) => true,
            Value::List(l) => l.iter().all(|i| matches!(i, Value::Scalar(_))),
            Value::Map(_) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{path} is not a subject or a list of subjects"))
        }
    }
    fn perms(v: &Value, path: &str) -> Result<(), String> {
        if !matches!(v, Value::Map(_)) {
            return Err(format!("{path} is not a map"));
        }
        only(v, path, PERMISSION_KEYS)?;
        for k in PERMISSION_KEYS {
            if let Some(r) = v.get(k) {
                let at = format!("{path}.{k}");
                if let Value::Map(_) = r {
                    only(r, &at, RULE_KEYS)?;
                    for rk in RULE_KEYS {
                        if let Some(list) = r.get(rk) {
                            subjects(list, &format!("{at}.{rk}"))?;
                        }
                    }
                } else {
                    subjects(r, &at)?;
                }
            }
        }
        Ok(())
    }
    only(root, "", TOP_KEYS)?;
    if let Some(a) = root.get("authorization") {
        if !matches!(a, Value::Map(_)) {
            return Err("authorization is not a map".into());
        }
        only(a, "authorization", AUTHORIZATION_KEYS)?;
        if a.get("users").is_some_and(|u| !matches!(u, Value::List(_))) {
            return Err("authorization.users is not a list".into());
        }
        if let Some(d) = a.get("default_permissions") {
            perms(d, "authorization.default_permissions")?;
        }
        if let Some(Value::List(users)) = a.get("users") {
            for u in users {
                only(u, "authorization.users[]", USER_KEYS)?;
                if let Some(p) = u.get("permissions") {
                    perms(p, "authorization.users[].permissions")?;
                }
            }
        }
    }
    if let Some(t) = root.get("tls") {
        only(t, "tls", TLS_KEYS)?;
    }
    Ok(())
}

/// A boolean as nats-server writes them: `true`/`yes`/`on`, `false`/`no`/`off`.
fn boolean(key: &str, v: &Value) -> Result<bool, String> {
    match v.text().map(str::to_ascii_lowercase).as_deref() {
        Some("true" | "yes" | "on") => Ok(true),
        Some("false" | "no" | "off") => Ok(false),
        _ => Err(format!("{key} is not a boolean: {v:?}")),
    }
}

/// The `tls` block of a parsed file (`cert_file`, `key_file`, `ca_file`, `verify`), if it has one.
///
/// # Errors
/// A message naming what is missing.
pub fn tls(root: &Value) -> Result<Option<crate::tls::TlsFiles>, String> {
    let Some(t) = root.get("tls") else {
        return Ok(None);
    };
    let file = |k: &str| t.get(k).and_then(Value::text).map(std::path::PathBuf::from);
    let (Some(cert), Some(key)) = (file("cert_file"), file("key_file")) else {
        return Err("tls needs cert_file and key_file".into());
    };
    let verify = match t.get("verify") {
        Some(v) => boolean("tls.verify", v)?,
        None => false,
    };
    let ca = file("ca_file");
    if verify && ca.is_none() {
        return Err("tls.verify needs ca_file".into());
    }
    Ok(Some(crate::tls::TlsFiles {
        cert,
        key,
        ca,
        verify,
    }))
}

/// The `authorization` block of a parsed file, if it has one.
///
/// # Errors
/// A message naming what is missing (a user without a password, say).
pub fn authorization(root: &Value) -> Result<Option<Auth>, String> {
    let Some(a) = root.get("authorization") else {
        return Ok(None);
    };
    let defaults = a.get("default_permissions").map(permissions);
    if let Some(t) = a.get("token").and_then(Value::text) {
        if defaults.is_some() {
            return Err(
                "authorization.default_permissions applies to users; a token has none".into(),
            );
        }
        return Ok(Some(Auth::Token(t.to_owned())));
    }
    if let Some(Value::List(users)) = a.get("users") {
        let mut out = Vec::new();
        for u in users {
            let user = u
                .get_any(&["user", "username"])
                .and_then(Value::text)
                .ok_or("a user in authorization.users has no name")?;
            let password = u
                .get_any(&["password", "pass"])
                .and_then(Value::text)
                .ok_or_else(|| format!("user {user} has no password"))?;
            out.push(User {
                user: user.to_owned(),
                password: password.to_owned(),
                permissions: u
                    .get("permissions")
                    .map(permissions)
                    .or_else(|| defaults.clone()),
            });
        }
        if out.is_empty() {
            return Err("authorization.users is empty".into());
        }
        return Ok(Some(Auth::Users(out)));
    }
    if defaults.is_some() {
        return Err(
            "authorization.default_permissions needs authorization.users to apply to".into(),
        );
    }
    match (
        a.get_any(&["user", "username"]).and_then(Value::text),
        a.get_any(&["password", "pass"]).and_then(Value::text),
    ) {
        (Some(user), Some(password)) => Ok(Some(Auth::User {
            user: user.to_owned(),
            password: password.to_owned(),
        })),
        (None, None) => Ok(None),
        _ => Err("authorization needs both user and password".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
# The embedded server of a locked-down broker.
port: 4333
listen = 127.0.0.1:4444   // a bare value may hold colons
max_payload 2097152
authorization {
  users = [
    { user: broker, password: "s3cret" }   # everything
    {
      user: app
      password: 'app pw'
      permissions: {
        publish: { allow: ["orders.>", "_INBOX.>"], deny: "orders.secret" }
        subscribe: ["orders.>", "_INBOX.>"]
      }
    },
  ]
}
"#;

    #[test]
    fn users_and_permissions_are_read() {
        let v = parse(FILE).unwrap();
        assert_eq!(v.get("port").and_then(Value::text), Some("4333"));
        assert_eq!(
            v.get("listen").and_then(Value::text),
            Some("127.0.0.1:4444")
        );
        assert_eq!(v.get("max_payload").and_then(Value::text), Some("2097152"));
        let Some(Auth::Users(users)) = authorization(&v).unwrap() else {
            panic!("users")
        };
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[0].user.as_str(), users[0].password.as_str()),
            ("broker", "s3cret")
        );
        assert_eq!(users[0].permissions, None);
        let p = users[1].permissions.clone().unwrap();
        assert_eq!(users[1].password, "app pw");
        assert_eq!(p.publish.allow, ["orders.>", "_INBOX.>"]);
        assert_eq!(p.publish.deny, ["orders.secret"]);
        assert_eq!(p.subscribe.allow, ["orders.>", "_INBOX.>"]);
    }

    #[test]
    fn the_tls_block_is_read() {
        let v = parse("tls {\n  cert_file: \"/c.pem\"\n  key_file: /k.pem\n  ca_file: /ca.pem\n  verify: true\n}\n").unwrap();
        let t = tls(&v).unwrap().unwrap();
        assert_eq!(t.cert, std::path::PathBuf::from("/c.pem"));
        assert_eq!(t.key, std::path::PathBuf::from("/k.pem"));
        assert_eq!(t.ca, Some(std::path::PathBuf::from("/ca.pem")));
        assert!(t.verify);
        assert_eq!(tls(&parse("port: 1").unwrap()).unwrap(), None);
        assert!(tls(&parse("tls { cert_file: a }").unwrap()).is_err());
        assert!(tls(&parse("tls { cert_file: a, key_file: b, verify: true }").unwrap()).is_err());
    }

    #[test]
    fn a_token_or_one_user_also_work() {
        let t = parse("authorization { token: abc }").unwrap();
        assert_eq!(authorization(&t).unwrap(), Some(Auth::Token("abc".into())));
        let u = parse("authorization {\n user: a\n password: b\n}").unwrap();
        assert_eq!(
            authorization(&u).unwrap(),
            Some(Auth::User {
                user: "a".into(),
                password: "b".into()
            })
        );
        assert_eq!(authorization(&parse("port: 1").unwrap()).unwrap(), None);
        assert!(authorization(&parse("authorization { user: a }").unwrap()).is_err());
        assert!(authorization(&parse("authorization { users: [ {user: a} ] }").unwrap()).is_err());
    }

    #[test]
    fn syntax_errors_name_their_line() {
        assert_eq!(parse("a {\n b: 1\n").unwrap_err().line, 3);
        assert_eq!(
            parse("a: [1, 2\n").unwrap_err().what,
            "a list is not closed with ]"
        );
        assert_eq!(parse("a: \"open\nb: 1").unwrap_err().line, 1);
        assert!(parse("a:\n").is_err());
        let deep = "a: ".to_owned() + &"[".repeat(100);
        assert_eq!(parse(&deep).unwrap_err().what, "nested too deeply");
    }
}
