//! A small PostgreSQL-protocol-aware TCP proxy for deterministic wire-level
//! faults against a real server.
//!
//! [`Proxy::start`] listens on a free loopback port and forwards every
//! connection to the upstream server, message by message. It follows the
//! protocol's framing (the untyped startup message, then typed messages of
//! one type byte and an `i32` length that counts itself), and tracks per
//! connection which SQL each request runs: statement names from `Parse`,
//! the statement each `Bind` executes, simple `Query` texts. Requests are
//! grouped by `Sync` (or one `Query`); the server answers each group with
//! exactly one `ReadyForQuery`, so every server message is attributed to the
//! group at the head of the connection's queue, and every group to the
//! transaction it ran in (`ReadyForQuery` status `I` ends one).
//!
//! Armed rules then act at exact points of the server's reply stream:
//!
//! - [`Proxy::cut_after_commit_applied`]: the server's `CommandComplete`
//!   for `COMMIT` of a transaction that ran a statement containing the given
//!   text is dropped with everything after it, and both sockets are closed:
//!   the server committed, the client never hears so;
//! - [`Proxy::fatal_after_commit`]: that `CommandComplete` is replaced by
//!   (or followed by) an `ErrorResponse` FATAL 57P01 and both sockets are
//!   closed, as when a backend is terminated during its commit;
//! - [`Proxy::delay_server_replies`]: the replies of such a transaction are
//!   held back, so a client future can be dropped while its request has
//!   reached the server;
//! - [`Proxy::kill_idle`]: every connection with no request in flight (the
//!   idle pooled ones) is closed — after a FATAL 57P01 as
//!   `pg_terminate_backend` does, silently, or (as a NAT timeout does) on
//!   the server side only until the client next sends ([`KillStyle`]).
//!
//! Each rule fires once unless armed with [`Proxy::arm`] for more. Set
//! `DUROPG_PROXY_TRACE` to print every message the proxy sees. TLS is
//! not proxied: an `SSLRequest` or `GSSENCRequest` is answered `N` by the
//! proxy itself, so a client with `sslmode=prefer` continues in plain text.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// The message of the FATAL a terminated backend sends (SQLSTATE 57P01).
pub const ADMIN_SHUTDOWN_MESSAGE: &str = "terminating connection due to administrator command";

/// Where [`Proxy::fatal_after_commit`] puts its FATAL 57P01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalPlacement {
    /// The client gets the FATAL in place of `CommandComplete(COMMIT)`.
    InsteadOfReply,
    /// The client gets `CommandComplete(COMMIT)`, then the FATAL (no `ReadyForQuery`).
    AfterReply,
}

/// How [`Proxy::kill_idle`] ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillStyle {
    /// Send the client a FATAL 57P01 first, as `pg_terminate_backend` does.
    Fatal,
    /// Just close both sockets: the client sees its connection end at once.
    Close,
    /// Close the server side now, but leave the client's socket open until
    /// the client next sends, then close it without forwarding anything —
    /// as a NAT timeout or a dead peer does: the connection looks alive
    /// until it is used, and the request written to it is lost.
    Vanish,
}

/// What an armed rule does when its trigger is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Drop `CommandComplete(COMMIT)` and everything after it; close both sockets.
    Cut,
    /// Send a FATAL 57P01 in place of, or after, `CommandComplete(COMMIT)`; close both sockets.
    Fatal(FatalPlacement),
    /// Hold the transaction's replies back this long, from its first reply
    /// to a statement containing the text on.
    Delay(Duration),
}

impl Action {
    fn at_commit(self) -> bool {
        !matches!(self, Action::Delay(_))
    }
}

struct Armed {
    id: u64,
    matching: String,
    action: Action,
    remaining: u64,
    fired: Arc<AtomicU64>,
}

/// An armed rule: how often it fired; disarmed on request (not on drop).
#[derive(Clone)]
pub struct Rule {
    id: u64,
    fired: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("fired", &self.fired())
            .finish()
    }
}

impl Rule {
    /// How many times it fired.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// Stop it firing.
    pub fn disarm(&self) {
        lock(&self.shared.rules).retain(|r| r.id != self.id);
    }

    /// Wait (up to `limit`) until it has fired `n` times; whether it did.
    pub async fn wait_fired(&self, n: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.fired() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// A request group: what one `Sync` (or one simple `Query`) covers.
#[derive(Debug, Default)]
struct Group {
    /// SQL it executes (`Bind`s' statements, `Query` texts).
    sqls: Vec<String>,
    /// Its `Sync` went out (more messages cannot join it).
    synced: bool,
}

#[derive(Debug, Default)]
struct ConnState {
    /// The server's first `ReadyForQuery` arrived (startup is over).
    started: bool,
    /// Prepared statement name → SQL.
    statements: HashMap<String, String>,
    /// Groups sent and not yet answered by `ReadyForQuery`, oldest first.
    pending: VecDeque<Group>,
    /// SQL of the answered groups of the open transaction.
    tx_sqls: Vec<String>,
    /// No more client messages may be forwarded.
    closing: bool,
}

/// Why a connection is being closed by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseRequest {
    /// Close now; send the client nothing more.
    Quiet,
    /// Send the client FATAL 57P01, then close.
    Fatal,
    /// Close the server side now, the client's when it next sends.
    Vanish,
}

struct Conn {
    state: Mutex<ConnState>,
    close: watch::Sender<Option<CloseRequest>>,
    /// The server side is closed.
    server_gone: watch::Sender<bool>,
}

impl Conn {
    /// Close now, whatever was asked before.
    fn force_close(&self) {
        lock(&self.state).closing = true;
        self.close.send_replace(Some(CloseRequest::Quiet));
    }

    /// Ask for a close (the first request wins).
    fn request_close(&self, how: CloseRequest) {
        lock(&self.state).closing = true;
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(how);
                true
            } else {
                false
            }
        });
    }
}

struct Shared {
    rules: Mutex<Vec<Armed>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    accepted: AtomicU64,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running proxy; stops listening and closes every connection when dropped.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    template_url: String,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish()
    }
}

impl Proxy {
    /// Listen on 127.0.0.1:<free port> and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_with_url(upstream, "postgres://postgres@127.0.0.1/postgres".to_string()).await
    }

    /// A proxy in front of the server of the `postgres://` URL `url`;
    /// [`Proxy::url`] is then `url` with its host and port replaced.
    pub async fn in_front_of(url: &str) -> Self {
        let (_, authority, _) = split_url(url);
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5432")
        };
        let upstream = tokio::net::lookup_host(&hostport)
            .await
            .unwrap_or_else(|e| panic!("cannot resolve {hostport}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("{hostport} resolves to nothing"));
        Self::start_with_url(upstream, url.to_string()).await
    }

    async fn start_with_url(upstream: SocketAddr, template_url: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            rules: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                tokio::spawn(serve(Arc::clone(&accept_shared), client, upstream));
            }
        });
        Self {
            shared,
            addr,
            template_url,
            accept,
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL through the proxy: the URL given to [`Proxy::in_front_of`]
    /// (else `postgres://postgres@…/postgres`) with host and port replaced.
    pub fn url(&self) -> String {
        let (scheme, authority, rest) = split_url(&self.template_url);
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}{rest}", self.port())
    }

    /// A URL through the proxy for `user` and `database`.
    pub fn url_for(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port())
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Arm a rule: `action` for transactions that ran a statement whose SQL
    /// contains `matching`, the next `times` times.
    pub fn arm(&self, matching: &str, action: Action, times: u64) -> Rule {
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst);
        let fired = Arc::new(AtomicU64::new(0));
        lock(&self.shared.rules).push(Armed {
            id,
            matching: matching.to_string(),
            action,
            remaining: times,
            fired: Arc::clone(&fired),
        });
        Rule {
            id,
            fired,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Once: the COMMIT of a transaction that ran `matching` is applied by
    /// the server, but its reply and everything after it are dropped and
    /// both sockets closed.
    pub fn cut_after_commit_applied(&self, matching: &str) -> Rule {
        self.arm(matching, Action::Cut, 1)
    }

    /// Once: the COMMIT of a transaction that ran `matching` is applied;
    /// the client gets FATAL 57P01 instead of, or after, its reply; both
    /// sockets are closed.
    pub fn fatal_after_commit(&self, matching: &str, placement: FatalPlacement) -> Rule {
        self.arm(matching, Action::Fatal(placement), 1)
    }

    /// Once: hold back the replies of a transaction that runs `matching`
    /// for `by`, from the first reply to that statement on (the server has
    /// the request and answers it meanwhile; only the client waits).
    pub fn delay_server_replies(&self, matching: &str, by: Duration) -> Rule {
        self.arm(matching, Action::Delay(by), 1)
    }

    /// Close every connection that is past its startup and has no request in
    /// flight, as `style` says; returns how many, once the server side of
    /// each is closed.
    pub async fn kill_idle(&self, style: KillStyle) -> usize {
        let victims: Vec<Arc<Conn>> = {
            let conns = lock(&self.shared.conns);
            conns
                .values()
                .filter(|c| {
                    let mut st = lock(&c.state);
                    let idle = st.started && st.pending.is_empty() && !st.closing;
                    if idle {
                        // Under the lock: no request can slip out after the check.
                        st.closing = true;
                    }
                    idle
                })
                .cloned()
                .collect()
        };
        let how = match style {
            KillStyle::Fatal => CloseRequest::Fatal,
            KillStyle::Close => CloseRequest::Quiet,
            KillStyle::Vanish => CloseRequest::Vanish,
        };
        for c in &victims {
            c.request_close(how);
        }
        for c in &victims {
            let mut gone = c.server_gone.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(5), gone.wait_for(|d| *d)).await;
        }
        victims.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in lock(&self.shared.conns).values() {
            c.force_close();
        }
    }
}

/// `(scheme, authority, "/rest…")` of a URL.
fn split_url(url: &str) -> (&str, &str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    match rest.find(['/', '?']) {
        Some(i) => (scheme, &rest[..i], &rest[i..]),
        None => (scheme, rest, ""),
    }
}

/// One framed message: its type byte (0 for the untyped startup message)
/// and the whole frame as it travels.
struct Message {
    kind: u8,
    frame: Vec<u8>,
}

impl Message {
    fn body(&self) -> &[u8] {
        &self.frame[if self.kind == 0 { 4 } else { 5 }..]
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 5);
    f.push(kind);
    f.extend_from_slice(&(i32::try_from(body.len() + 4).unwrap_or(i32::MAX)).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// The `ErrorResponse` a backend terminated by an administrator sends.
pub fn admin_shutdown_frame() -> Vec<u8> {
    let mut body = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "57P01"),
        (b'M', ADMIN_SHUTDOWN_MESSAGE),
    ] {
        body.push(code);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    frame(b'E', &body)
}

/// The NUL-terminated string at the start of `bytes`, and what follows it.
fn cstr(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let rest = bytes.get(end + 1..).unwrap_or(&[]);
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), rest)
}

async fn read_len<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<usize> {
    let len = r.read_i32().await?;
    usize::try_from(len)
        .ok()
        .filter(|l| *l >= 4)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad message length {len}")))
}

/// Read one typed message; `None` at a clean end of stream.
async fn read_typed<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Message>> {
    let mut kind = [0u8; 1];
    if r.read(&mut kind).await? == 0 {
        return Ok(None);
    }
    let len = read_len(r).await?;
    let mut f = vec![0u8; len + 1];
    f[0] = kind[0];
    f[1..5].copy_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes());
    r.read_exact(&mut f[5..]).await?;
    Ok(Some(Message {
        kind: kind[0],
        frame: f,
    }))
}

/// Read the untyped startup-phase message.
async fn read_untyped<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Message> {
    let len = read_len(r).await?;
    let mut f = vec![0u8; len];
    f[..4].copy_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes());
    r.read_exact(&mut f[4..]).await?;
    Ok(Message { kind: 0, frame: f })
}

/// One proxied connection, from accept to close.
async fn serve(shared: Arc<Shared>, mut client: TcpStream, upstream: SocketAddr) {
    // Startup: answer SSL/GSS encryption requests "no" ourselves, then pass
    // the startup message (or a cancel request) on.
    let startup = loop {
        let Ok(msg) = read_untyped(&mut client).await else {
            return;
        };
        let code = msg
            .body()
            .get(..4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if matches!(code, Some(SSL_REQUEST | GSSENC_REQUEST)) {
            if client.write_all(b"N").await.is_err() {
                return;
            }
            continue;
        }
        break msg;
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    if server.write_all(&startup.frame).await.is_err() {
        return;
    }
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let conn = Arc::new(Conn {
        state: Mutex::new(ConnState::default()),
        close: watch::channel(None).0,
        server_gone: watch::channel(false).0,
    });
    lock(&shared.conns).insert(id, Arc::clone(&conn));
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    tokio::join!(
        requests(&conn, client_r, server_w),
        replies(&shared, &conn, server_r, client_w)
    );
    lock(&shared.conns).remove(&id);
}

/// With `DUROPG_PROXY_TRACE` set, print every message and the connection's
/// request bookkeeping to stderr.
fn trace(from: &str, msg: &Message, st: &ConnState) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("DUROPG_PROXY_TRACE").is_some()) {
        let kind = if msg.kind == 0 { '-' } else { char::from(msg.kind) };
        eprintln!(
            "proxy {from} {kind} {:?} pending={:?} tx={:?}",
            String::from_utf8_lossy(msg.body()),
            st.pending,
            st.tx_sqls
        );
    }
}

/// When the connection is asked to close: how (`None`: the sender is gone).
async fn closed(rx: &mut watch::Receiver<Option<CloseRequest>>) -> Option<CloseRequest> {
    match rx.wait_for(Option::is_some).await {
        Ok(how) => *how,
        Err(_) => None,
    }
}

/// Client → server: record what each request runs, then forward it.
async fn requests(conn: &Conn, client_r: OwnedReadHalf, server_w: OwnedWriteHalf) {
    let mut close = conn.close.subscribe();
    let mut from = BufReader::new(client_r);
    let mut to = BufWriter::new(server_w);
    let mut how = None;
    loop {
        let msg = tokio::select! {
            m = read_typed(&mut from) => m,
            h = closed(&mut close) => {
                how = h;
                break;
            }
        };
        let Ok(Some(msg)) = msg else {
            break;
        };
        if !track_request(conn, &msg) {
            break;
        }
        if to.write_all(&msg.frame).await.is_err() {
            break;
        }
        if from.buffer().is_empty() && to.flush().await.is_err() {
            break;
        }
    }
    let _ = to.flush().await;
    let _ = to.into_inner().shutdown().await;
    conn.server_gone.send_replace(true);
    if how == Some(CloseRequest::Vanish) {
        // The client finds out when it next sends: swallow that, then close.
        tokio::select! {
            _ = read_typed(&mut from) => {}
            _ = close.wait_for(|c| *c == Some(CloseRequest::Quiet)) => {}
        }
        conn.force_close();
    } else {
        conn.request_close(CloseRequest::Quiet);
    }
}

/// Record a client message; false when the connection is closing and it
/// must not be forwarded.
fn track_request(conn: &Conn, msg: &Message) -> bool {
    let mut st = lock(&conn.state);
    trace("client", msg, &st);
    if st.closing {
        return false;
    }
    let st = &mut *st;
    let body = msg.body();
    match msg.kind {
        b'Q' => {
            let (sql, _) = cstr(body);
            st.pending.push_back(Group {
                sqls: vec![sql],
                synced: true,
            });
        }
        b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' => {
            if st.pending.back().is_none_or(|g| g.synced) {
                st.pending.push_back(Group::default());
            }
            let Some(group) = st.pending.back_mut() else {
                return true;
            };
            match msg.kind {
                b'P' => {
                    let (name, rest) = cstr(body);
                    let (sql, _) = cstr(rest);
                    st.statements.insert(name, sql);
                }
                b'B' => {
                    let (_portal, rest) = cstr(body);
                    let (statement, _) = cstr(rest);
                    group
                        .sqls
                        .push(st.statements.get(&statement).cloned().unwrap_or_default());
                }
                b'S' => group.synced = true,
                _ => {}
            }
        }
        _ => {}
    }
    true
}

/// What to do with one server message.
enum Verdict {
    Forward,
    Cut,
    Fatal(FatalPlacement),
    Delay(Duration),
}

/// Server → client: attribute each reply to its request group and
/// transaction, apply armed rules, forward.
async fn replies(shared: &Shared, conn: &Conn, server_r: OwnedReadHalf, client_w: OwnedWriteHalf) {
    let mut close = conn.close.subscribe();
    let mut from = BufReader::new(server_r);
    let mut to = BufWriter::new(client_w);
    loop {
        // `biased`, the close request first: a vanish shuts the server side,
        // so the server's EOF follows the request and may be ready with it;
        // seen first, it would close the client too, which a vanished
        // connection must not (it looks alive until it is used).
        let msg = tokio::select! {
            biased;
            how = closed(&mut close) => {
                match how {
                    Some(CloseRequest::Fatal) => {
                        let _ = to.write_all(&admin_shutdown_frame()).await;
                    }
                    Some(CloseRequest::Vanish) => {
                        drop(from);
                        let _ = to.flush().await;
                        // Until the client sends again, its socket stays open.
                        let _ = close.wait_for(|c| *c == Some(CloseRequest::Quiet)).await;
                        let _ = to.into_inner().shutdown().await;
                        return;
                    }
                    _ => {}
                }
                break;
            }
            m = read_typed(&mut from) => m,
        };
        let Ok(Some(msg)) = msg else {
            break;
        };
        let verdict = track_reply(shared, conn, &msg);
        let forwarded = match verdict {
            Verdict::Forward => to.write_all(&msg.frame).await.is_ok(),
            Verdict::Delay(by) => {
                let _ = to.flush().await;
                tokio::select! {
                    _ = tokio::time::sleep(by) => {}
                    _ = closed(&mut close) => break,
                }
                to.write_all(&msg.frame).await.is_ok()
            }
            Verdict::Cut => break,
            Verdict::Fatal(FatalPlacement::InsteadOfReply) => {
                let _ = to.write_all(&admin_shutdown_frame()).await;
                break;
            }
            Verdict::Fatal(FatalPlacement::AfterReply) => {
                let _ = to.write_all(&msg.frame).await;
                let _ = to.write_all(&admin_shutdown_frame()).await;
                break;
            }
        };
        if !forwarded || (from.buffer().is_empty() && to.flush().await.is_err()) {
            break;
        }
    }
    let _ = to.flush().await;
    let _ = to.into_inner().shutdown().await;
    conn.request_close(CloseRequest::Quiet);
}

/// Attribute a server message and decide its fate.
fn track_reply(shared: &Shared, conn: &Conn, msg: &Message) -> Verdict {
    let mut st = lock(&conn.state);
    let st = &mut *st;
    trace("server", msg, st);
    let is_commit = msg.kind == b'C' && cstr(msg.body()).0 == "COMMIT";
    // Notifications, notices and parameter reports may come at any time:
    // they belong to no request and no rule acts on them.
    let asynchronous = matches!(msg.kind, b'A' | b'N' | b'S');
    let verdict = if asynchronous {
        Verdict::Forward
    } else {
        let front: &[String] = st.pending.front().map_or(&[], |g| &g.sqls);
        let in_tx = |m: &str| st.tx_sqls.iter().chain(front).any(|s| s.contains(m));
        let mut rules = lock(&shared.rules);
        let hit = rules
            .iter_mut()
            .find(|r| r.remaining > 0 && r.action.at_commit() == is_commit && in_tx(&r.matching));
        match hit {
            // Outside a transaction's replies (startup, notifications) nothing fires.
            Some(rule) if st.started && !st.pending.is_empty() => {
                rule.remaining -= 1;
                rule.fired.fetch_add(1, Ordering::SeqCst);
                match rule.action {
                    Action::Cut => Verdict::Cut,
                    Action::Fatal(p) => Verdict::Fatal(p),
                    Action::Delay(d) => Verdict::Delay(d),
                }
            }
            _ => Verdict::Forward,
        }
    };
    if let Verdict::Cut | Verdict::Fatal(_) = verdict {
        st.closing = true;
    }
    if msg.kind == b'Z' {
        st.started = true;
        if let Some(group) = st.pending.pop_front() {
            if msg.body().first() == Some(&b'I') {
                st.tx_sqls.clear();
            } else {
                st.tx_sqls.extend(group.sqls);
            }
        }
    }
    verdict
}
