//! One client connection: a reader task that parses and routes, and a writer task that drains a
//! bounded outbound buffer.
//!
//! Routing batches its output: everything one read produces for a connection, including this
//! connection's own replies, is appended to a per-read batch and handed over at the end of the
//! read. That keeps one lock and one wake-up per target per read, and keeps every connection's
//! output in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::local::{LocalMessage, LocalQueue, Pushed};
use crate::parser::{Op, Parser};
use crate::server::{Auth, Shared};
use crate::sublist::{MatchCache, Subscription, is_valid_literal_subject, is_valid_subject};

/// Longest wait for one lagging consumer.
const STALL_MAX: Duration = Duration::from_millis(100);
/// Longest total wait of a producer per read.
const STALL_TOTAL: Duration = Duration::from_millis(200);

/// The shared half of a connection: what other connections need to deliver to it.
#[derive(Debug)]
pub struct Conn {
    /// Server-unique id, also sent as `client_id` in INFO.
    pub id: u64,
    out: Mutex<Outbound>,
    wake: Notify,
    killed: AtomicBool,
    kill: Notify,
    headers: AtomicBool,
    max_pending: usize,
    /// Woken after each write to the socket, for publishers stalled on this connection.
    drained: Notify,
    subs: Mutex<HashMap<Bytes, Arc<Subscription>>>,
    /// The name the client gave in CONNECT, if any.
    pub(crate) name: std::sync::OnceLock<String>,
    /// For an in-process subscriber: where its messages wait instead of in `out`.
    local: Option<LocalQueue>,
}

#[derive(Debug, Default)]
struct Outbound {
    buf: BytesMut,
    /// Bytes handed to the socket and not yet written.
    inflight: usize,
    closing: bool,
}

impl Conn {
    /// An in-process subscriber's connection, named as its options say.
    pub(crate) fn new_local(id: u64, queue: LocalQueue, name: String) -> Self {
        let mut conn = Conn::new(id, 0);
        conn.headers.store(true, Ordering::Release);
        let _ = conn.name.set(name);
        conn.local = Some(queue);
        conn
    }

    pub(crate) fn local(&self) -> Option<&LocalQueue> {
        self.local.as_ref()
    }

    pub(crate) fn new(id: u64, max_pending: usize) -> Self {
        Conn {
            id,
            out: Mutex::new(Outbound::default()),
            wake: Notify::new(),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
            headers: AtomicBool::new(false),
            max_pending,
            drained: Notify::new(),
            subs: Mutex::new(HashMap::new()),
            name: std::sync::OnceLock::new(),
            local: None,
        }
    }

    /// Queues bytes for the socket. A connection whose queue would exceed `max_pending` is a slow
    /// consumer: it is closed at once and its queue dropped, as nats-server does. Returns whether
    /// the queue is now over half full, so the producer should stall.
    fn enqueue(&self, data: BytesMut) -> bool {
        let mut out = self.out.lock();
        if out.closing {
            return false;
        }
        let pending = out.buf.len() + out.inflight + data.len();
        if pending > self.max_pending {
            drop(out);
            self.close(true);
            return false;
        }
        if out.buf.is_empty() {
            out.buf = data;
        } else {
            out.buf.extend_from_slice(&data);
        }
        drop(out);
        self.wake.notify_one();
        pending > self.max_pending / 2
    }

    fn over_half_full(&self) -> bool {
        let out = self.out.lock();
        !out.closing && out.buf.len() + out.inflight > self.max_pending / 2
    }

    /// Waits, up to `limit`, for this connection's queue to fall to half of `max_pending`.
    async fn stall(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let drained = self.drained.notified();
            if !self.over_half_full() {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }

    /// Closes the connection: the writer flushes what is queued (unless `drop_queued`) and shuts
    /// the socket; the reader stops.
    pub fn close(&self, drop_queued: bool) {
        {
            let mut out = self.out.lock();
            out.closing = true;
            if drop_queued {
                out.buf.clear();
            }
        }
        self.killed.store(true, Ordering::Release);
        self.kill.notify_waiters();
        self.wake.notify_one();
    }

    async fn killed(&self) {
        loop {
            let notified = self.kill.notified();
            if self.killed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A CONNECT's options. Absent fields take nats-server's defaults: verbose and pedantic are on.
#[derive(Debug, Deserialize)]
struct ConnectInfo {
    #[serde(default = "yes")]
    verbose: bool,
    #[serde(default = "yes")]
    pedantic: bool,
    #[serde(default = "yes")]
    echo: bool,
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    no_responders: bool,
    #[serde(default)]
    auth_token: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    pass: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn yes() -> bool {
    true
}

/// The reader side's state.
struct Session {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    connected: bool,
    verbose: bool,
    pedantic: bool,
    echo: bool,
    headers: bool,
    no_responders: bool,
    pings_out: u32,
    /// The authenticated user's permissions; `None`: anything.
    perms: Option<crate::perms::Permissions>,
    cache: MatchCache,
    batch: Vec<(Arc<Conn>, BytesMut)>,
    /// In-process subscribers this read filled past their limit: the reader waits for them
    /// before it reads on.
    full_locals: Vec<Arc<Conn>>,
    rng: u64,
}

/// Tells a connection the server will not serve it, and closes it.
pub(crate) async fn refuse(mut stream: TcpStream, why: &str) {
    let line = format!("-ERR '{why}'\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Serves one accepted connection until it closes. With TLS, the INFO goes out in the clear
/// and the client's handshake follows, as with nats-server.
pub(crate) async fn serve(shared: Arc<Shared>, mut stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let Some(tls) = shared.cfg.tls.clone() else {
        let (rd, wr) = stream.into_split();
        return serve_io(shared, rd, wr, id, peer, false).await;
    };
    let info = shared.info_line(id, peer);
    let wait = shared.cfg.auth_timeout;
    if !matches!(
        tokio::time::timeout(wait, stream.write_all(info.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    // A client that never finishes its handshake (or speaks plain NATS) is dropped.
    if let Ok(Ok(s)) = tokio::time::timeout(wait, acceptor.accept(stream)).await {
        let (rd, wr) = tokio::io::split(s);
        serve_io(shared, rd, wr, id, peer, true).await;
    }
}

async fn serve_io<R, W>(
    shared: Arc<Shared>,
    mut rd: R,
    wr: W,
    id: u64,
    peer: Option<std::net::SocketAddr>,
    info_sent: bool,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn::new(id, shared.cfg.max_pending));
    shared.register(conn.clone());
    let writer = tokio::spawn(write_loop(conn.clone(), wr, shared.cfg.write_deadline));

    let mut session = Session {
        shared: shared.clone(),
        conn: conn.clone(),
        connected: false,
        verbose: false,
        pedantic: false,
        echo: true,
        headers: false,
        no_responders: false,
        pings_out: 0,
        perms: None,
        cache: MatchCache::default(),
        batch: Vec::new(),
        full_locals: Vec::new(),
        rng: id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
    };
    if !info_sent {
        session.send_to_self(shared.info_line(id, peer).as_bytes());
        session.flush();
    }

    let mut parser = Parser::new(shared.cfg.max_control_line, shared.cfg.max_payload);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ping = tokio::time::interval(shared.cfg.ping_interval);
    ping.tick().await;
    let auth_deadline = tokio::time::sleep(shared.cfg.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut shutdown = shared.shutdown_signal();
    loop {
        tokio::select! {
            read = rd.read_buf(&mut buf) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let keep = session.process(&mut parser, &mut buf);
                let stalled = session.flush();
                if !keep {
                    break;
                }
                // In-process subscribers never lose a message: their publishers stop reading
                // until they have drained.
                let mut closed = false;
                for target in std::mem::take(&mut session.full_locals) {
                    let Some(q) = target.local() else { continue };
                    tokio::select! {
                        _ = q.drained() => {}
                        _ = conn.killed() => closed = true,
                        _ = shutdown.changed() => closed = true,
                    }
                    if closed {
                        break;
                    }
                }
                if closed {
                    break;
                }
                // A producer whose consumers lag waits for them a little, as nats-server does, so
                // a consumer that keeps up slowly is not cut off as a slow consumer.
                let started = tokio::time::Instant::now();
                for target in stalled {
                    let left = STALL_TOTAL.saturating_sub(started.elapsed());
                    target.stall(left.min(STALL_MAX)).await;
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
            }
            _ = ping.tick() => {
                if session.pings_out >= shared.cfg.max_pings_out {
                    session.send_err("Stale Connection");
                    session.flush();
                    break;
                }
                session.pings_out += 1;
                session.send_to_self(b"PING\r\n");
                session.flush();
            }
            _ = &mut auth_deadline, if shared.cfg.auth.is_some() && !session.connected => {
                session.send_err("Authentication Timeout");
                session.flush();
                break;
            }
            _ = conn.killed() => break,
            _ = shutdown.changed() => break,
        }
    }
    conn.close(false);
    let subs: Vec<Arc<Subscription>> = conn.subs.lock().drain().map(|(_, s)| s).collect();
    for s in subs {
        shared.sublist.remove(&s);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    shared.unregister(id);
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    conn: Arc<Conn>,
    mut wr: W,
    deadline: Duration,
) {
    loop {
        let chunk = {
            let mut out = conn.out.lock();
            if out.buf.is_empty() {
                if out.closing {
                    break;
                }
                None
            } else {
                let chunk = std::mem::take(&mut out.buf);
                out.inflight = chunk.len();
                Some(chunk)
            }
        };
        let Some(chunk) = chunk else {
            conn.wake.notified().await;
            continue;
        };
        match tokio::time::timeout(deadline, wr.write_all(&chunk)).await {
            Ok(Ok(())) => {
                conn.out.lock().inflight = 0;
                conn.drained.notify_waiters();
            }
            // A write that cannot finish in time is a slow consumer; an error is a dead peer.
            _ => {
                conn.close(true);
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
}

fn push_usize(buf: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

/// Whether a client's password or token matches the configured one, as nats-server decides:
/// a configured bcrypt hash (`$2a$`, `$2b$`, `$2x$`, `$2y$`) is verified against it; anything
/// else is compared in constant time, so the time taken tells nothing of how much matched.
fn secret_matches(given: Option<&str>, configured: &str) -> bool {
    let Some(given) = given else {
        return false;
    };
    let bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| configured.starts_with(p));
    if bcrypt {
        // bcrypt is slow on purpose, and anyone who knows a user name may ask for it before
        // logging in: on a multi-threaded runtime the worker hands its other connections to
        // another thread meanwhile, so they go on being served.
        let verify = || bcrypt::verify(given, configured).unwrap_or(false);
        return match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(verify),
            _ => verify(),
        };
    }
    subtle::ConstantTimeEq::ct_eq(given.as_bytes(), configured.as_bytes()).into()
}

impl Session {
    fn batch_for(&mut self, conn: &Arc<Conn>) -> &mut BytesMut {
        let i = match self.batch.iter().position(|(c, _)| Arc::ptr_eq(c, conn)) {
            Some(i) => i,
            None => {
                self.batch
                    .push((conn.clone(), BytesMut::with_capacity(4096)));
                self.batch.len() - 1
            }
        };
        &mut self.batch[i].1
    }

    fn send_to_self(&mut self, bytes: &[u8]) {
        let conn = self.conn.clone();
        self.batch_for(&conn).put_slice(bytes);
    }

    fn send_err(&mut self, text: &str) {
        let line = format!("-ERR '{text}'\r\n");
        self.send_to_self(line.as_bytes());
    }

    fn ok(&mut self) {
        if self.verbose {
            self.send_to_self(b"+OK\r\n");
        }
    }

    /// Hands the batch to its connections; returns the other connections that are over half
    /// full.
    fn flush(&mut self) -> Vec<Arc<Conn>> {
        let mut stalled = Vec::new();
        for (conn, bytes) in self.batch.drain(..) {
            if !bytes.is_empty() && conn.enqueue(bytes) && conn.id != self.conn.id {
                stalled.push(conn);
            }
        }
        stalled
    }

    /// Handles every complete operation in `buf`. Returns `false` when the connection must close.
    fn process(&mut self, parser: &mut Parser, buf: &mut BytesMut) -> bool {
        loop {
            // Before authentication only a CONNECT may come, and anything else is refused at
            // its first byte, as nats-server does: a connection that has not authenticated
            // holds at most one control line (the parser's limit), never a payload.
            if self.shared.cfg.auth.is_some()
                && !self.connected
                && buf.first().is_some_and(|b| !b.eq_ignore_ascii_case(&b'C'))
            {
                self.send_err("Authorization Violation");
                return false;
            }
            let op = match parser.next(buf) {
                Ok(Some(op)) => op,
                Ok(None) => return true,
                Err(e) => {
                    if self.shared.cfg.auth.is_some() && !self.connected {
                        self.send_err("Authorization Violation");
                    } else if let Some(text) = e.message() {
                        self.send_err(text);
                    }
                    return false;
                }
            };
            if self.shared.cfg.auth.is_some() && !self.connected && !matches!(op, Op::Connect(_)) {
                self.send_err("Authorization Violation");
                return false;
            }
            if !self.handle(op) {
                return false;
            }
        }
    }

    fn handle(&mut self, op: Op) -> bool {
        match op {
            Op::Connect(json) => return self.connect(&json),
            Op::Ping => self.send_to_self(b"PONG\r\n"),
            Op::Pong => self.pings_out = 0,
            Op::Ok | Op::Err => {}
            Op::Sub {
                subject,
                queue,
                sid,
            } => self.subscribe(subject, queue, sid),
            Op::Unsub { sid, max } => {
                let existing = self.conn.subs.lock().get(&sid).cloned();
                if let Some(sub) = existing {
                    match max {
                        Some(m) if sub.delivered.load(Ordering::Acquire) < m => {
                            sub.max.store(m, Ordering::Release);
                        }
                        _ => remove_sub(&self.shared, &sub),
                    }
                }
                self.ok();
            }
            Op::Pub {
                subject,
                reply,
                header_len,
                payload,
            } => {
                if header_len.is_some() && !self.headers {
                    // nats-server treats HPUB without header support as a protocol violation.
                    return false;
                }
                // A wildcard in a published subject is refused with nats-server's words, pedantic
                // or not, and the message routed nowhere; the connection stays. (nats-server 2.9
                // warns only in pedantic mode and routes it all the same: a message on n `*`
                // tokens to every subscription that is a wildcard there.)
                if subject
                    .split(|b| *b == b'.')
                    .any(|t| t == b"*" || t == b">")
                {
                    self.send_err("Invalid Publish Subject");
                    return true;
                }
                // Other malformed subjects: pedantic mode warns, as nats-server does, then the
                // usual +OK, and routes the message.
                if self.pedantic
                    && std::str::from_utf8(&subject).map_or(true, |s| !is_valid_literal_subject(s))
                {
                    self.send_err("Invalid Publish Subject");
                }
                if let Some(p) = &self.perms
                    && !std::str::from_utf8(&subject).is_ok_and(|s| p.publish.allows_publish(s))
                {
                    // As nats-server: the message is dropped, the connection stays.
                    let text = format!(
                        "Permissions Violation for Publish to \"{}\"",
                        String::from_utf8_lossy(&subject)
                    );
                    self.send_err(&text);
                    return true;
                }
                // The acknowledgement comes before the deliveries, as nats-server sends it.
                self.ok();
                self.publish(&subject, reply.as_ref(), header_len, &payload);
            }
        }
        true
    }

    fn connect(&mut self, json: &[u8]) -> bool {
        let Ok(info) = serde_json::from_slice::<ConnectInfo>(json) else {
            return false;
        };
        if let Some(auth) = &self.shared.cfg.auth {
            let ok = match auth {
                Auth::Token(t) => secret_matches(info.auth_token.as_deref(), t),
                Auth::User { user, password } => {
                    info.user.as_deref() == Some(user.as_str())
                        && secret_matches(info.pass.as_deref(), password)
                }
                Auth::Users(users) => match users.iter().find(|u| {
                    info.user.as_deref() == Some(u.user.as_str())
                        && secret_matches(info.pass.as_deref(), &u.password)
                }) {
                    Some(u) => {
                        self.perms = u.permissions.clone();
                        true
                    }
                    None => false,
                },
            };
            if !ok {
                self.send_err("Authorization Violation");
                return false;
            }
        }
        if info.no_responders && !info.headers {
            self.send_err("no responders requires headers support");
            return false;
        }
        self.connected = true;
        self.verbose = info.verbose;
        self.pedantic = info.pedantic;
        self.echo = info.echo;
        self.headers = info.headers;
        self.no_responders = info.no_responders;
        self.conn.headers.store(info.headers, Ordering::Release);
        if let Some(name) = info.name {
            let _ = self.conn.name.set(name);
        }
        self.ok();
        true
    }

    fn subscribe(&mut self, subject: Bytes, queue: Option<Bytes>, sid: Bytes) {
        let subject = match std::str::from_utf8(&subject) {
            Ok(s) if is_valid_subject(s) => s.to_owned(),
            _ => {
                self.send_err("Invalid Subject");
                return;
            }
        };
        if let Some(p) = &self.perms
            && !p.subscribe.allows_subscribe(&subject)
        {
            self.send_err(&format!(
                "Permissions Violation for Subscription to \"{subject}\""
            ));
            return;
        }
        let queue = match queue.map(|q| String::from_utf8(q.to_vec())) {
            None => None,
            Some(Ok(q)) if !q.is_empty() => Some(q),
            Some(_) => {
                self.send_err("Invalid Queue Name");
                return;
            }
        };
        if self.conn.subs.lock().contains_key(&sid) {
            // A duplicate sid is ignored, as nats-server does.
            self.ok();
            return;
        }
        let max = self.shared.cfg.max_subscriptions;
        if max > 0 && self.conn.subs.lock().len() >= max {
            self.send_err("maximum subscriptions exceeded");
            return;
        }
        let sub = Arc::new(Subscription {
            conn: self.conn.clone(),
            sid: sid.clone(),
            subject,
            queue,
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        });
        self.conn.subs.lock().insert(sid, sub.clone());
        self.shared.sublist.insert(sub);
        self.ok();
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn publish(
        &mut self,
        subject: &Bytes,
        reply: Option<&Bytes>,
        header_len: Option<usize>,
        payload: &Bytes,
    ) {
        let Ok(subj) = std::str::from_utf8(subject) else {
            return;
        };
        let shared = self.shared.clone();
        let matches = self.cache.get(&shared.sublist, subj);
        let mut delivered = false;
        for sub in &matches.plain {
            if !self.echoes_to(&sub.conn) {
                continue;
            }
            delivered |= self.deliver(sub, subject, reply, header_len, payload);
        }
        for group in &matches.groups {
            let start = (self.next_random() % group.len() as u64) as usize;
            for i in 0..group.len() {
                let sub = &group[(start + i) % group.len()];
                if !self.echoes_to(&sub.conn) {
                    continue;
                }
                if self.deliver(sub, subject, reply, header_len, payload) {
                    delivered = true;
                    break;
                }
            }
        }
        if let (false, true, Some(reply)) = (delivered, self.no_responders, reply) {
            self.no_responders_status(reply);
        }
    }

    /// Whether this connection's publishes may reach `target`: not when either side turned
    /// echo off and they are the same connection, or, for an in-process subscriber, go by the
    /// same name.
    fn echoes_to(&self, target: &Conn) -> bool {
        if let Some(q) = target.local() {
            return q.echo() || self.conn.name.get() != target.name.get();
        }
        self.echo || target.id != self.conn.id
    }

    /// Hands a message to an in-process subscriber's queue. A publisher that may wait and
    /// filled the queue past its limit waits, after this read, until it has drained.
    fn deliver_local(
        &mut self,
        target: &Arc<Conn>,
        q: &LocalQueue,
        subject: &Bytes,
        reply: Option<&Bytes>,
        header_len: Option<usize>,
        payload: &Bytes,
    ) {
        let h = header_len.unwrap_or(0).min(payload.len());
        let msg = LocalMessage {
            subject: subject.clone(),
            reply: reply.cloned(),
            headers: header_len.map(|_| payload.slice(..h)),
            payload: payload.slice(h..),
        };
        let may_wait = !q.never_waits(self.conn.name.get().map(String::as_str));
        if let Pushed::MustWait = q.push(msg, may_wait)
            && !self.full_locals.iter().any(|c| Arc::ptr_eq(c, target))
        {
            self.full_locals.push(target.clone());
        }
    }

    /// Tells a requester that nobody listens: a 503 status sent on its own reply subscription.
    fn no_responders_status(&mut self, reply: &Bytes) {
        let Ok(r) = std::str::from_utf8(reply) else {
            return;
        };
        let shared = self.shared.clone();
        let matches = shared.sublist.matches(r);
        let own = matches
            .plain
            .iter()
            .chain(matches.groups.iter().flatten())
            .find(|s| s.conn.id == self.conn.id)
            .cloned();
        if let Some(sub) = own {
            let status = Bytes::from_static(b"NATS/1.0 503\r\n\r\n");
            self.deliver(&sub, reply, None, Some(status.len()), &status);
        }
    }

    fn deliver(
        &mut self,
        sub: &Arc<Subscription>,
        subject: &Bytes,
        reply: Option<&Bytes>,
        header_len: Option<usize>,
        payload: &Bytes,
    ) -> bool {
        let Some(last) = sub.claim() else {
            return false;
        };
        let conn = sub.conn.clone();
        if conn.killed.load(Ordering::Acquire) {
            return false;
        }
        if let Some(q) = conn.local() {
            self.deliver_local(&conn, q, subject, reply, header_len, payload);
            if last {
                remove_sub(&self.shared, sub);
            }
            return true;
        }
        let with_headers = header_len.is_some() && conn.headers.load(Ordering::Acquire);
        let body = match header_len {
            Some(h) if !with_headers => &payload[h..],
            _ => &payload[..],
        };
        let out = self.batch_for(&conn);
        out.reserve(subject.len() + sub.sid.len() + body.len() + 64);
        out.put_slice(if with_headers { b"HMSG " } else { b"MSG " });
        out.put_slice(subject);
        out.put_u8(b' ');
        out.put_slice(&sub.sid);
        out.put_u8(b' ');
        if let Some(r) = reply {
            out.put_slice(r);
            out.put_u8(b' ');
        }
        if with_headers {
            push_usize(out, header_len.unwrap_or(0));
            out.put_u8(b' ');
        }
        push_usize(out, body.len());
        out.put_slice(b"\r\n");
        out.put_slice(body);
        out.put_slice(b"\r\n");
        // The slow-consumer limit holds while one read's deliveries are gathered, too: a read of
        // small PUBs times many subscriptions of one connection must not gather without bound.
        if out.len() > conn.max_pending {
            out.clear();
            conn.close(true);
        }
        if last {
            remove_sub(&self.shared, sub);
        }
        true
    }
}

fn remove_sub(shared: &Shared, sub: &Arc<Subscription>) {
    {
        let mut subs = sub.conn.subs.lock();
        if subs.get(&sub.sid).is_some_and(|s| Arc::ptr_eq(s, sub)) {
            subs.remove(&sub.sid);
        }
    }
    shared.sublist.remove(sub);
}
