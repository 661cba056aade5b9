//! The HTTP server's connections: our own accept loop over hyper's HTTP/1.1, so that idle and
//! half-open connections cannot starve the process of descriptors. It owns the open-files limit
//! (raised to the hard limit at start), the connection cap sized from it, the header-read and
//! idle timeouts, making room at the cap by closing the longest-idle connection, and graceful
//! shutdown. What a request does once it is read is the router's business.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Config;
use crate::logging::RateLimitedWarn;

/// Descriptors kept for the process itself beyond the counted connections: stdio, the epoll
/// and signal descriptors, the listener, configuration and certificate files, DNS look-ups.
const BASE_FILES: u64 = 64;

/// The default cap never exceeds this even when the descriptor limit is huge: each
/// connection costs buffers, and a fleet's operators and scripts need far fewer.
const DEFAULT_CAP_CEILING: u64 = 16_384;

/// The open-files limit after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard one (the soft default, often 1,024, is what a
/// service hits; the hard one is what the operator granted). On failure the limit stays as it
/// was and the caller sizes the cap from it.
#[cfg(unix)]
pub fn raise_open_files_limit() -> io::Result<FileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            // An unlimited hard limit cannot be the soft one on Linux (nr_open caps it).
            tracing::warn!(
                error = %io::Error::last_os_error(),
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "could not raise the open-files limit; sizing HTTP connections from the soft limit"
            );
        }
    }
    Ok(FileLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> io::Result<FileLimit> {
    Ok(FileLimit {
        soft: 8192,
        hard: 8192,
    })
}

/// How many HTTP connections fit in `files` descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Descriptors kept for everything that is not an HTTP connection.
    pub reserve: u64,
    /// The connection cap.
    pub max_connections: usize,
}

/// Size the connection cap: the open-files limit minus a reserve for the Postgres pool (plus
/// the leader's and the database probe's own connections, and the webhook worker's LISTEN
/// connection when endpoints are configured), the MQTT connections, the webhook worker's
/// concurrent requests (`max_in_flight` per endpoint) and the process's own files. `http.max_connections` may lower
/// it, never raise it past what the descriptors allow.
pub fn budget(cfg: &Config, files: u64) -> anyhow::Result<Budget> {
    // Each endpoint sends at most `max_in_flight` requests at once, one connection each.
    let webhooks: u64 = cfg.webhooks.iter().map(|w| w.max_in_flight as u64).sum();
    let reserve = u64::from(cfg.database.max_connections)
        + 2
        + u64::from(!cfg.webhooks.is_empty())
        + cfg.mqtt.connections as u64
        + webhooks
        + BASE_FILES;
    let room = files.saturating_sub(reserve);
    if room == 0 {
        anyhow::bail!(
            "the open-files limit ({files}) leaves no descriptors for HTTP connections after \
             reserving {reserve} for Postgres, MQTT, webhooks and the process; raise it \
             (e.g. LimitNOFILE= or ulimit -n)"
        );
    }
    let max = match cfg.http.max_connections {
        Some(n) if n as u64 > room => {
            tracing::warn!(
                configured = n,
                allowed = room,
                files,
                reserve,
                "http.max_connections is more than the open-files limit allows; using the limit"
            );
            room
        }
        Some(n) => n as u64,
        None => room.min(DEFAULT_CAP_CEILING),
    };
    Ok(Budget {
        reserve,
        max_connections: usize::try_from(max).unwrap_or(usize::MAX),
    })
}

/// The connection settings of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// From a request head's first byte to its last.
    pub header_read_timeout: Duration,
    /// With no request in flight and none begun.
    pub idle_timeout: Duration,
    /// How long shutdown lets in-flight requests (and streams) finish before closing them.
    pub shutdown_grace: Duration,
}

/// Why we closed a connection (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The peer closed it, or hyper finished with it.
    Done,
    IdleTimeout,
    HeaderTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// Still busy when the shutdown grace ran out.
    Shutdown,
}

impl Closed {
    fn label(self) -> Option<&'static str> {
        match self {
            Closed::Done => None,
            Closed::IdleTimeout => Some("idle_timeout"),
            Closed::HeaderTimeout => Some("header_timeout"),
            Closed::Evicted => Some("evicted"),
            Closed::Shutdown => Some("shutdown"),
        }
    }
}

/// What one connection is doing, as far as the timeouts care.
struct Activity {
    /// Requests whose response has not been fully sent (a stream counts until it ends).
    in_flight: usize,
    /// When the last request finished (or the connection opened).
    idle_since: Instant,
    /// When the first byte of the next request head arrived, while none is in flight.
    head_started: Option<Instant>,
}

/// One open connection in the table.
struct Slot {
    activity: Mutex<Activity>,
    /// Wakes the connection's watchdog when the activity changes.
    changed: Notify,
    /// Cancelled to close the connection now (eviction, end of the shutdown grace).
    close: CancellationToken,
}

impl Slot {
    fn new() -> Self {
        Self {
            activity: Mutex::new(Activity {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
            }),
            changed: Notify::new(),
            close: CancellationToken::new(),
        }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bytes_read(&self) {
        let mut a = self.activity();
        if a.in_flight == 0 && a.head_started.is_none() {
            a.head_started = Some(Instant::now());
            drop(a);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        let mut a = self.activity();
        a.in_flight += 1;
        a.head_started = None;
        drop(a);
        self.changed.notify_one();
    }

    fn request_ended(&self) {
        let mut a = self.activity();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
            a.head_started = None;
        }
        drop(a);
        self.changed.notify_one();
    }

    /// When this connection is to be closed if nothing happens meanwhile, and why.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Closed)> {
        let a = self.activity();
        if a.in_flight > 0 {
            None
        } else if let Some(started) = a.head_started {
            Some((started + limits.header_read_timeout, Closed::HeaderTimeout))
        } else {
            Some((a.idle_since + limits.idle_timeout, Closed::IdleTimeout))
        }
    }
}

/// The open connections, so that one can be picked for eviction.
#[derive(Default)]
struct Table {
    next_id: u64,
    slots: HashMap<u64, Arc<Slot>>,
}

impl Table {
    /// Close the connection that has been idle the longest, if any is idle; a connection with a
    /// request in flight (a live stream, a slow query) is never picked.
    /// Returns whether one was closed now; `false` also while an earlier one is still closing
    /// (its slot is about to be released, so a second would be closed for nothing).
    fn evict_longest_idle(&self) -> bool {
        if self.slots.values().any(|s| s.close.is_cancelled()) {
            return false;
        }
        let victim = self
            .slots
            .values()
            .filter_map(|s| {
                let a = s.activity();
                (a.in_flight == 0).then_some((a.idle_since, s))
            })
            .min_by_key(|(idle_since, _)| *idle_since);
        match victim {
            Some((_, s)) => {
                s.close.cancel();
                true
            }
            None => false,
        }
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve `router` on `listener` until `cancel`, then stop accepting, let in-flight requests
/// finish for up to `limits.shutdown_grace` and close what remains.
///
/// At the cap, a new connection is accepted and the longest-idle connection closed to make
/// room: an idle keep-alive connection costs its client only a reconnect, while leaving new
/// connections in the kernel's backlog would make a `/healthz` probe wait behind every idle
/// or half-open socket until timeouts free slots. Only when every connection has a request in
/// flight does the loop stop accepting until one finishes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let table = Arc::new(Mutex::new(Table::default()));
    let tracker = TaskTracker::new();
    let warn = RateLimitedWarn::new(Duration::from_secs(10));
    metrics
        .http
        .max_connections
        .set(limits.max_connections as i64);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) despite the cap: the connection waits
                    // in the backlog; try again shortly rather than spin.
                    metrics.http.accept_errors.inc();
                    warn.warn("http_accept", &format_args!("accepting an HTTP connection failed: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = cancel.cancelled() => break,
                    }
                }
            },
            _ = cancel.cancelled() => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Every connection may be busy now; one that finishes its request becomes
                // idle without releasing its slot, so look again every few milliseconds.
                let mut permit = None;
                while permit.is_none() {
                    if lock(&table).evict_longest_idle() {
                        metrics.http.closed("evicted");
                    }
                    tokio::select! {
                        p = slots.clone().acquire_owned() => match p {
                            Ok(p) => permit = Some(p),
                            Err(_) => break,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
                match permit {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let slot = Arc::new(Slot::new());
        let id = {
            let mut t = lock(&table);
            t.next_id += 1;
            let id = t.next_id;
            t.slots.insert(id, slot.clone());
            id
        };
        let (router, metrics, cancel, table) = (
            router.clone(),
            metrics.clone(),
            cancel.clone(),
            table.clone(),
        );
        tracker.spawn(async move {
            metrics.http.connections.inc();
            let closed = connection(stream, router, slot, limits, cancel).await;
            if let Some(reason) = closed.label().filter(|_| closed != Closed::Evicted) {
                // Evictions are counted where they are decided.
                metrics.http.closed(reason);
            }
            lock(&table).slots.remove(&id);
            metrics.http.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        for s in lock(&table).slots.values() {
            s.close.cancel();
        }
        tracker.wait().await;
    }
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serve one connection; returns why it ended.
async fn connection(
    stream: TcpStream,
    router: Router,
    slot: Arc<Slot>,
    limits: Limits,
    cancel: CancellationToken,
) -> Closed {
    let _ = stream.set_nodelay(true);
    // The client's address, for handlers that need it (the login rate limit per address).
    let peer = stream.peer_addr().ok();
    let io = TokioIo::new(Watched {
        inner: stream,
        slot: slot.clone(),
    });
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = InFlight::start(slot.clone());
            let mut req = req.map(Body::new);
            if let Some(peer) = peer {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            let response = router.clone().oneshot(req);
            async move {
                let response = response.await.unwrap_or_else(|e: Infallible| match e {});
                Ok::<_, Infallible>(response.map(|inner| Tracked {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    // No hyper timer: hyper's own header-read timeout starts when it begins waiting for a head,
    // so it would close idle keep-alive connections at the header bound too; the watchdog below
    // times both from what the socket actually receives.
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = slot.deadline(&limits);
        let expiry = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return Closed::Done,
            _ = slot.changed.notified() => {}
            _ = slot.close.cancelled() => {
                return if draining { Closed::Shutdown } else { Closed::Evicted };
            }
            _ = expiry => {
                // Activity may have changed since the deadline was computed; recheck it.
                if let Some((at, why)) = slot.deadline(&limits) {
                    if at <= Instant::now() {
                        return why;
                    }
                }
            }
            _ = cancel.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The socket, telling the watchdog when bytes of a new request arrive.
struct Watched {
    inner: TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.slot.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request in flight, from its head until its response body is done or dropped.
struct InFlight(Arc<Slot>);

impl InFlight {
    fn start(slot: Arc<Slot>) -> Self {
        slot.request_started();
        Self(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped,
/// so a long stream is never taken for an idle connection.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_a_reserve_and_honours_a_lower_setting() {
        let mut cfg = Config::default();
        let b = budget(&cfg, 1024).unwrap();
        assert_eq!(b.reserve, 16 + 2 + 1 + 64);
        assert_eq!(b.max_connections, 1024 - 83);
        // each webhook endpoint reserves its max_in_flight (default 4)
        cfg.webhooks.push(Default::default());
        cfg.webhooks.push(Default::default());
        cfg.webhooks[1].max_in_flight = 60;
        // plus the worker's LISTEN connection
        assert_eq!(budget(&cfg, 1024).unwrap().reserve, 83 + 64 + 1);
        cfg.http.max_connections = Some(100);
        assert_eq!(budget(&cfg, 1024).unwrap().max_connections, 100);
        cfg.http.max_connections = Some(5000);
        assert_eq!(budget(&cfg, 1024).unwrap().max_connections, 1024 - 148);
        assert!(budget(&cfg, 100).is_err());
        cfg.http.max_connections = None;
        assert_eq!(
            budget(&cfg, 1 << 20).unwrap().max_connections,
            DEFAULT_CAP_CEILING as usize
        );
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let l = raise_open_files_limit().unwrap();
        assert!(l.soft <= l.hard);
        let again = raise_open_files_limit().unwrap();
        assert_eq!(again, l);
    }
}
