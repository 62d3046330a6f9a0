//! The lean writer's wire: where its connection goes, the connection itself,
//! its handshake, and RESP: commands written by [`encode`], replies read by
//! the `redis-protocol` crate (fred's own codec).
//!
//! *Where* is resolved at every (re)connection, so a writer follows the
//! topology: one node or a Unix socket as the URL says; behind Sentinel, the
//! primary a sentinel names now (checked with `ROLE`, as fred does); in a
//! cluster, the primary that owns the writer's key slot in the shared fred
//! client's view of the cluster (which fred keeps current; a `MOVED` asks it
//! to refresh). The connection is TCP (no Nagle), a Unix socket, or TLS
//! through tokio-rustls with the configuration fred's clients use.
//!
//! Behind Sentinel, one task ([`Endpoint::watch_primary`]) also asks the
//! sentinels which primary they name every [`WATCH_EVERY`], and a writer
//! leaves a primary they no longer name. A primary that was frozen (or cut
//! off) through a failover comes back still taking writes as a primary
//! until the sentinels demote it, and the demotion discards what it took;
//! nothing tells its clients but the sentinels.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut as _, Bytes, BytesMut};
use fred::{
    interfaces::{ClientLike as _, ClusterInterface as _},
    prelude::{Client, Config as FredConfig},
    types::config::ServerConfig,
};
use redis_protocol::resp2::{decode::decode, types::OwnedFrame};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::watch,
};
use tracing::warn;

use crate::redis::{NamedPrimary, PrimaryAddress as Address, Target};

/// The read half of a writer's connection.
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a writer's connection.
pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// How often the sentinels are asked which primary they name.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A connection ready for writes.
pub(super) struct Link {
    pub(super) read: ReadHalf,
    pub(super) write: WriteHalf,
    /// Behind Sentinel, the primary it reached.
    pub(super) primary: Option<Address>,
}

/// Why a connection could not be made (logged by the writer, never shown
/// to a caller; it holds no secret).
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("redis answered the handshake with an error: {0}")]
    Refused(String),
    #[error("{0}")]
    Topology(String),
    #[error("the TLS handshake failed: {source}{}", if *.not_tls { Stage::Tls.hint() } else { "" })]
    Tls {
        /// The handshake's error.
        source: std::io::Error,
        /// The server's first bytes were no TLS record.
        not_tls: bool,
    },
    #[error("{stage} did not complete within {after:?}{}", stage.hint())]
    Timeout {
        /// The connect deadline.
        after: Duration,
        /// How far the connection got.
        stage: Stage,
    },
}

/// How far a connection got before its deadline, so a timeout says which
/// step hung: a TLS URL pointed at a plaintext port hangs in the TLS
/// handshake, a firewall in the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Opening the TCP connection (or asking the sentinels).
    Tcp,
    /// The TLS handshake.
    Tls,
    /// Redis's part: `AUTH`, `SELECT`, `ROLE`.
    Handshake,
}

impl Stage {
    fn load(cell: &AtomicU8) -> Self {
        match cell.load(Ordering::Relaxed) {
            0 => Self::Tcp,
            1 => Self::Tls,
            _ => Self::Handshake,
        }
    }

    fn reach(self, cell: &AtomicU8) {
        cell.store(self as u8, Ordering::Relaxed);
    }

    fn hint(self) -> &'static str {
        match self {
            Self::Tls => crate::redis::NOT_TLS_HINT,
            Self::Tcp | Self::Handshake => "",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "the TCP connection",
            Self::Tls => "the TLS handshake",
            Self::Handshake => "the handshake (AUTH, SELECT, ROLE)",
        })
    }
}

/// A Sentinel service's name, and each sentinel's answer (`host:port`,
/// then the primary it names or why it could not be asked).
pub(crate) type SentinelAnswers = (String, Vec<(String, Result<(String, u16), String>)>);

/// Where a writer's connection goes.
#[derive(Debug)]
enum Place {
    /// One node, by host and port.
    Node(String, u16),
    /// A Unix socket.
    Unix(PathBuf),
    /// The primary of `service`, as one of `sentinels` names it.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        service: String,
    },
    /// The primary owning `slot` in the shared client's view of the cluster.
    Cluster { view: Client, slot: u16 },
}

/// A writer's destination and how to open a connection there.
#[derive(Debug)]
pub(super) struct Endpoint {
    place: Place,
    username: Option<String>,
    password: Option<String>,
    database: Option<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    /// Behind Sentinel, the primary the sentinels name now (kept by
    /// [`Endpoint::watch_primary`]'s task).
    named: Option<NamedPrimary>,
    /// Run on each new connection: a write the user may not make is said
    /// when the writer connects, not only at the first request.
    checks: Vec<Check>,
    /// `CLIENT SETNAME` of each new connection, so that `CLIENT LIST`
    /// tells the writers apart.
    name: Option<String>,
}

/// A command that writes nothing, and that Redis refuses with `NOPERM`
/// only where the user may not make a route's job write: ACL checks the
/// command and its keys before the command reads its arguments, and these
/// are wrong on purpose (a negative `MAXLEN`; a SHA-1 no script has). A
/// script's own commands are checked only when it runs, so not here.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// What the write goes to, for the log: a stream or a queue.
    what: String,
    command: Vec<Bytes>,
}

impl Check {
    /// What the write goes to: `stream NAME` or `queue NAME`.
    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// The command, its name first.
    pub(crate) fn command(&self) -> &[Bytes] {
        &self.command
    }

    /// The check of an `XADD` to `stream`.
    pub(super) fn xadd(stream: &[u8]) -> Self {
        let stream = Bytes::copy_from_slice(stream);
        Self {
            what: format!("stream {}", String::from_utf8_lossy(&stream)),
            command: vec![
                Bytes::from_static(b"XADD"),
                stream,
                Bytes::from_static(b"MAXLEN"),
                Bytes::from_static(b"-1"),
                Bytes::from_static(b"*"),
                Bytes::from_static(b"check"),
                Bytes::from_static(b"1"),
            ],
        }
    }

    /// The check of an `EVALSHA` of a script taking `keys` of the queue
    /// whose keys start with `base`.
    pub(super) fn script(base: &[u8], keys: &[Bytes]) -> Self {
        let command = [
            Bytes::from_static(b"EVALSHA"),
            Bytes::from_static(&[b'0'; 40]),
            Bytes::from(keys.len().to_string()),
        ];
        Self {
            what: format!(
                "queue {}",
                String::from_utf8_lossy(base.strip_suffix(b":").unwrap_or(base))
            ),
            command: command.into_iter().chain(keys.iter().cloned()).collect(),
        }
    }
}

impl Endpoint {
    /// The endpoint of `target` for writes to `key` (its slot matters only
    /// in a cluster, whose layout `view`, a fred client, follows).
    pub(super) fn new(
        target: &Target,
        view: &Client,
        key: &[u8],
    ) -> Result<Self, fred::error::Error> {
        let config = FredConfig::from_url(&target.url)?;
        let place = match &config.server {
            ServerConfig::Centralized { server } => {
                Place::Node(server.host.to_string(), server.port)
            }
            ServerConfig::Unix { path } => Place::Unix(path.clone()),
            ServerConfig::Sentinel {
                hosts,
                service_name,
            } => Place::Sentinel {
                sentinels: hosts.iter().map(|s| (s.host.to_string(), s.port)).collect(),
                service: service_name.clone(),
            },
            ServerConfig::Clustered { .. } => Place::Cluster {
                view: view.clone(),
                slot: fred::util::redis_keyslot(key),
            },
        };
        Ok(Self {
            place,
            username: config.username,
            password: config.password,
            database: config.database.filter(|db| *db != 0),
            tls: target.tls.clone(),
            connect_timeout: target.connect_timeout,
            named: None,
            checks: Vec::new(),
            name: None,
        })
    }

    /// This endpoint, its connections named `name` in Redis (best effort:
    /// a refusal leaves them unnamed).
    pub(super) fn named(mut self, name: String) -> Self {
        self.name = Some(name);
        self
    }

    /// This endpoint, running `checks` on each new connection.
    pub(super) fn checking(mut self, checks: Vec<Check>) -> Self {
        self.checks = checks;
        self
    }

    /// Behind Sentinel: starts, on `runtime`, the task that asks the
    /// sentinels which primary they name every [`WATCH_EVERY`], and returns
    /// what it learns (for [`Endpoint::following`]). On a switch it also
    /// makes `shared` (the fred client of idempotency records and rate
    /// buckets) reconnect, which asks the sentinels anew. It ends once
    /// nobody follows it. `None` elsewhere.
    pub(super) fn watch_primary(
        self,
        runtime: &tokio::runtime::Handle,
        shared: Client,
    ) -> Option<NamedPrimary> {
        let Place::Sentinel { sentinels, service } = &self.place else {
            return None;
        };
        let (sentinels, service) = (sentinels.clone(), service.clone());
        let (tx, rx) = watch::channel(None);
        let switches = metrics::counter!(crate::metrics::REDIS_PRIMARY_SWITCHES);
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                }
                let stage = AtomicU8::new(Stage::Tcp as u8);
                let asked = self.ask_sentinels(&sentinels, &service, &stage);
                let Ok(Ok(now)) = tokio::time::timeout(self.connect_timeout, asked).await else {
                    continue;
                };
                let mut switched = false;
                tx.send_if_modified(|named| {
                    if named.as_ref() == Some(&now) {
                        return false;
                    }
                    if let Some((host, port)) = named.replace(now.clone()) {
                        switched = true;
                        switches.increment(1);
                        warn!(
                            from = %format_args!("{host}:{port}"),
                            to = %format_args!("{}:{}", now.0, now.1),
                            "the sentinels name a new primary; the job writers leave the old one"
                        );
                    }
                    true
                });
                if switched {
                    let again = shared.force_reconnection();
                    let _ = tokio::time::timeout(self.connect_timeout, again).await;
                }
            }
        });
        Some(rx)
    }

    /// This endpoint, its writers leaving a primary the sentinels no longer
    /// name (`named`, from [`Endpoint::watch_primary`]).
    pub(super) fn following(mut self, named: Option<&NamedPrimary>) -> Self {
        self.named = named.cloned();
        self
    }

    /// Resolves when the sentinels name a primary other than `primary` (the
    /// one a connection reached); never without Sentinel.
    pub(super) async fn moved_from(&self, primary: Option<&Address>) {
        let (Some(named), Some(primary)) = (&self.named, primary) else {
            return std::future::pending().await;
        };
        // What was named before the connection was made is no news: a
        // change since, away from the primary it reached, is.
        let mut named = named.clone();
        named.borrow_and_update();
        crate::redis::primary_switched(Some(&mut named), &mut Some(primary.clone())).await;
    }

    /// Whether the endpoint is a cluster node (whose `MOVED` should refresh
    /// the cluster's layout).
    pub(super) fn cluster_view(&self) -> Option<&Client> {
        match &self.place {
            Place::Cluster { view, .. } => Some(view),
            _ => None,
        }
    }

    /// A new connection to where writes go now, authenticated, on the
    /// right database, and checked to be a primary.
    pub(super) async fn connect(&self) -> Result<Link, WireError> {
        let stage = AtomicU8::new(Stage::Tcp as u8);
        tokio::time::timeout(self.connect_timeout, self.open(&stage))
            .await
            .map_err(|_| WireError::Timeout {
                after: self.connect_timeout,
                stage: Stage::load(&stage),
            })?
    }

    async fn open(&self, stage: &AtomicU8) -> Result<Link, WireError> {
        let mut primary = None;
        let mut conn = match &self.place {
            Place::Node(host, port) => self.tcp(host, *port, host, stage).await?,
            Place::Unix(path) => {
                let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
                Conn::new(Box::new(r), Box::new(w))
            }
            Place::Sentinel { sentinels, service } => {
                let (host, port) = self.ask_sentinels(sentinels, service, stage).await?;
                let conn = self.tcp(&host, port, &host, stage).await?;
                primary = Some((host, port));
                conn
            }
            Place::Cluster { view, slot } => {
                let owner = || {
                    view.cached_cluster_state()
                        .and_then(|state| state.get_server(*slot).cloned())
                };
                let server = match owner() {
                    Some(server) => server,
                    None => {
                        // At start the shared client may not have read the
                        // topology yet: wait for its connection (for half
                        // the deadline) rather than fail, and have every
                        // writer warn, on every start.
                        let _ =
                            tokio::time::timeout(self.connect_timeout / 2, view.wait_for_connect())
                                .await;
                        owner().ok_or_else(|| {
                            WireError::Topology(format!("no cluster node owns slot {slot} yet"))
                        })?
                    }
                };
                let name = server
                    .tls_server_name
                    .as_ref()
                    .map_or_else(|| server.host.to_string(), ToString::to_string);
                self.tcp(&server.host, server.port, &name, stage).await?
            }
        };
        Stage::Handshake.reach(stage);
        self.authenticate(&mut conn).await?;
        if let Some(db) = self.database {
            conn.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        }
        if let Some(name) = &self.name {
            match conn.call(&[b"CLIENT", b"SETNAME", name.as_bytes()]).await {
                Ok(_) | Err(WireError::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match conn.call(&[b"ROLE"]).await? {
            OwnedFrame::Array(role) if matches!(role.first(), Some(OwnedFrame::BulkString(r)) if r == b"master") =>
                {}
            _ => return Err(WireError::Topology("the node is not a primary".to_owned())),
        }
        for check in &self.checks {
            let command: Vec<&[u8]> = check.command.iter().map(|a| a.as_ref()).collect();
            match conn.call(&command).await {
                Err(WireError::Refused(e)) if e.starts_with("NOPERM") => {
                    warn!(to = %check.what, error = %e, "the redis user may not write these jobs: their requests are answered 503 until redis's ACL allows the write (docs/DEPLOY.md lists the permissions)");
                }
                // Any other answer (the argument error, NOSCRIPT) is a yes.
                Ok(_) | Err(WireError::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Link {
            read: conn.read,
            write: conn.write,
            primary,
        })
    }

    /// `AUTH` with the URL's credentials, when it has any.
    async fn authenticate(&self, conn: &mut Conn) -> Result<(), WireError> {
        match (&self.username, &self.password) {
            (Some(user), Some(pass)) => {
                conn.call(&[b"AUTH", user.as_bytes(), pass.as_bytes()])
                    .await?;
            }
            (None, Some(pass)) => {
                conn.call(&[b"AUTH", pass.as_bytes()]).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A TCP connection to `host:port`, in TLS (checked as `name`) when the
    /// target uses it.
    /// `stage` is told when the connection and the TLS handshake start.
    async fn tcp(
        &self,
        host: &str,
        port: u16,
        name: &str,
        stage: &AtomicU8,
    ) -> Result<Conn, WireError> {
        Stage::Tcp.reach(stage);
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => {
                let (r, w) = tcp.into_split();
                Ok(Conn::new(Box::new(r), Box::new(w)))
            }
            Some(tls) => {
                let name =
                    rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| {
                        WireError::Topology(format!("{name} is not a TLS server name: {e}"))
                    })?;
                Stage::Tls.reach(stage);
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| WireError::Tls {
                        not_tls: source
                            .get_ref()
                            .and_then(|e| e.downcast_ref::<rustls::Error>())
                            .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_))),
                        source,
                    })?;
                let (r, w) = tokio::io::split(stream);
                Ok(Conn::new(Box::new(r), Box::new(w)))
            }
        }
    }

    /// Behind Sentinel, the monitored primary's service name and what each
    /// sentinel of the URL names as that primary, or why it could not be
    /// asked, by `host:port`; `None` elsewhere.
    pub(super) async fn ask_each_sentinel(&self) -> Option<SentinelAnswers> {
        let Place::Sentinel { sentinels, service } = &self.place else {
            return None;
        };
        let stage = AtomicU8::new(0);
        let mut answers = Vec::with_capacity(sentinels.len());
        for sentinel in sentinels {
            let asked = self
                .ask_sentinels(std::slice::from_ref(sentinel), service, &stage)
                .await;
            let (host, port) = sentinel;
            answers.push((format!("{host}:{port}"), asked.map_err(|e| e.to_string())));
        }
        Some((service.clone(), answers))
    }

    /// The primary's address, from the first sentinel that names one.
    async fn ask_sentinels(
        &self,
        sentinels: &[(String, u16)],
        service: &str,
        stage: &AtomicU8,
    ) -> Result<(String, u16), WireError> {
        let mut last = WireError::Topology("no sentinel configured".to_owned());
        for (host, port) in sentinels {
            let asked = async {
                let mut conn = self.tcp(host, *port, host, stage).await?;
                Stage::Handshake.reach(stage);
                self.authenticate(&mut conn).await?;
                let answer = conn
                    .call(&[b"SENTINEL", b"get-master-addr-by-name", service.as_bytes()])
                    .await?;
                primary_address(&answer).ok_or_else(|| {
                    WireError::Topology(format!(
                        "sentinel {host}:{port} names no primary for {service}"
                    ))
                })
            };
            match asked.await {
                Ok(address) => return Ok(address),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// `host` and `port` from a `SENTINEL get-master-addr-by-name` answer.
fn primary_address(answer: &OwnedFrame) -> Option<(String, u16)> {
    let OwnedFrame::Array(parts) = answer else {
        return None;
    };
    match &parts[..] {
        [OwnedFrame::BulkString(host), OwnedFrame::BulkString(port)] => Some((
            String::from_utf8(host.clone()).ok()?,
            std::str::from_utf8(port).ok()?.parse().ok()?,
        )),
        _ => None,
    }
}

/// A connection during its handshake: one command at a time.
struct Conn {
    read: ReadHalf,
    write: WriteHalf,
    buf: BytesMut,
}

impl Conn {
    fn new(read: ReadHalf, write: WriteHalf) -> Self {
        Self {
            read,
            write,
            buf: BytesMut::with_capacity(512),
        }
    }

    /// Sends one command and reads its answer; an error answer is an error.
    async fn call(&mut self, args: &[&[u8]]) -> Result<OwnedFrame, WireError> {
        let mut out = BytesMut::new();
        encode(&mut out, args.iter().map(|a| Arg::Bytes(a)));
        self.write.write_all(&out).await?;
        self.write.flush().await?;
        loop {
            match decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.advance(used);
                    return match frame {
                        OwnedFrame::Error(e) => Err(WireError::Refused(first_word_and_rest(&e))),
                        frame => Ok(frame),
                    };
                }
                Ok(None) => {
                    if self.read.read_buf(&mut self.buf).await? == 0 {
                        return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(e) => return Err(WireError::Refused(format!("unreadable answer: {e}"))),
            }
        }
    }
}

/// An error answer as Redis wrote it (it names no secret: `WRONGPASS`
/// says only that the pair was wrong).
fn first_word_and_rest(error: &str) -> String {
    error.chars().take(200).collect()
}

/// One argument of a command: bytes, or an integer Redis reads from its
/// decimal digits.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

/// Appends one command to `out`: `*<count>`, then each argument as a bulk
/// string (`$<len>`, its bytes), as Redis reads a request.
///
/// Written here rather than by `redis-protocol` (which decodes the replies):
/// its encoder builds a frame per argument, measures the whole command in a
/// first pass (a floating-point `log10` per length), zero-fills, then
/// copies, which cost ten `XADD`s about a quarter of the request's CPU
/// (BENCHMARKS.md §22). A unit test holds this encoding to the crate's,
/// byte for byte.
pub(super) fn encode<'a, I>(out: &mut BytesMut, args: I)
where
    I: IntoIterator<Item = Arg<'a>>,
    I::IntoIter: Clone,
{
    let args = args.into_iter();
    out.put_u8(b'*');
    out.put_slice(itoa::Buffer::new().format(args.clone().count()).as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        match arg {
            Arg::Bytes(bytes) => bulk(out, bytes),
            Arg::Int(n) => bulk(out, itoa::Buffer::new().format(n).as_bytes()),
        }
    }
}

/// `$<len>\r\n<bytes>\r\n`.
fn bulk(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u8(b'$');
    out.put_slice(itoa::Buffer::new().format(bytes.len()).as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;
    use redis_protocol::resp2::{encode::extend_encode_borrowed, types::BorrowedFrame};

    use super::{Arg, encode};

    /// An argument as bytes or an integer, for both encoders.
    fn arg() -> impl Strategy<Value = Result<Vec<u8>, i64>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Ok),
            any::<i64>().prop_map(Err),
            Just(Err(0)),
            Just(Err(i64::MIN)),
        ]
    }

    proptest! {
        /// Every command is encoded byte for byte as `redis-protocol`
        /// encodes it (integers as bulk strings, as Redis reads requests).
        #[test]
        fn commands_are_encoded_as_redis_protocol_encodes_them(
            args in proptest::collection::vec(arg(), 0..40),
            prefix in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let ours_args = args.iter().map(|a| match a {
                Ok(bytes) => Arg::Bytes(bytes),
                Err(n) => Arg::Int(*n),
            });
            let frames: Vec<BorrowedFrame<'_>> = args
                .iter()
                .map(|a| match a {
                    Ok(bytes) => BorrowedFrame::BulkString(bytes),
                    Err(n) => BorrowedFrame::Integer(*n),
                })
                .collect();
            let mut ours = BytesMut::from(&prefix[..]);
            encode(&mut ours, ours_args);
            let mut theirs = BytesMut::from(&prefix[..]);
            extend_encode_borrowed(&mut theirs, &BorrowedFrame::Array(&frames), true).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }
}
