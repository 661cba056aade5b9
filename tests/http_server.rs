//! The HTTP server's connection handling (`fleetwatch::http::server`) over real sockets, with a
//! small router of its own (no database): half-open requests closed at the header-read timeout,
//! idle connections at the idle timeout, streams never taken for idle, the connection cap
//! making room by closing the longest-idle connection, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::routing::get;
use axum::Router;
use fleetwatch::http::server::{serve, Limits};
use fleetwatch::metrics::Metrics;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A response body sending `left` chunks, one every `every`: a stand-in for a live stream.
struct Ticks {
    left: u32,
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.left -= 1;
        let next = tokio::time::Instant::now() + this.every;
        this.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

fn ticks(n: u32, every: Duration) -> Body {
    Body::new(Ticks {
        left: n,
        every,
        sleep: Box::pin(tokio::time::sleep(every)),
    })
}

struct Server {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Server {
    let router = Router::new().route("/", get(|| async { "ok" })).route(
        "/stream",
        get(|| async { ticks(8, Duration::from_millis(150)) }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        router,
        limits,
        metrics.clone(),
        cancel.clone(),
    ));
    Server {
        addr,
        metrics,
        cancel,
        task,
    }
}

fn limits(header: u64, idle: u64, max: usize) -> Limits {
    Limits {
        max_connections: max,
        header_read_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        shutdown_grace: Duration::from_secs(5),
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
const STREAM: &[u8] = b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n";

/// Read one response: headers, then a content-length body or chunks up to the last one.
async fn response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            match len {
                Some(n) if body.len() >= n => return text,
                None if body.ends_with("0\r\n\r\n") => return text,
                _ => {}
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How long until the server closes `s` (EOF or reset), at most `within`.
async fn closed_after(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(start.elapsed()),
        Ok(Ok(n)) => panic!(
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
        Err(_) => None,
    }
}

fn metric(m: &Metrics, line: &str) -> f64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_half_open_request_is_closed_at_the_header_read_timeout() {
    let srv = start(limits(300, 10_000, 16)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let t = closed_after(&mut s, Duration::from_secs(3))
        .await
        .expect("closed within the header-read timeout, long before the idle timeout");
    assert!(t >= Duration::from_millis(250), "too early: {t:?}");
    assert!(t <= Duration::from_millis(1000), "too late: {t:?}");
    assert_eq!(
        metric(
            &srv.metrics,
            r#"fleetwatch_http_connections_closed_total{reason="header_timeout"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn an_idle_connection_outlives_the_header_timeout_and_closes_at_the_idle_timeout() {
    let srv = start(limits(200, 900, 16)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // idle past the header-read timeout: no request has begun, so only the idle timeout counts
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(GET).await.unwrap();
    assert!(response(&mut s).await.ends_with("ok"));
    // keep-alive: a second request on the same connection
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(GET).await.unwrap();
    assert!(response(&mut s).await.ends_with("ok"));
    let t = closed_after(&mut s, Duration::from_secs(3))
        .await
        .expect("closed at the idle timeout");
    assert!(t >= Duration::from_millis(800), "too early: {t:?}");
    assert!(t <= Duration::from_millis(1500), "too late: {t:?}");
    assert_eq!(
        metric(
            &srv.metrics,
            r#"fleetwatch_http_connections_closed_total{reason="idle_timeout"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_stream_longer_than_the_idle_timeout_is_not_cut() {
    // 8 chunks 150 ms apart: 1.2 s of streaming against a 300 ms idle timeout
    let srv = start(limits(300, 300, 16)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(STREAM).await.unwrap();
    let r = response(&mut s).await;
    assert_eq!(r.matches("tick").count(), 8, "{r}");
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_makes_room() {
    let srv = start(limits(10_000, 10_000, 2)).await;
    let mut oldest = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut newer = TcpStream::connect(srv.addr).await.unwrap();
    newer.write_all(GET).await.unwrap();
    assert!(response(&mut newer).await.ends_with("ok"));
    // a third connection at a cap of two: answered at once
    let mut probe = TcpStream::connect(srv.addr).await.unwrap();
    probe.write_all(GET).await.unwrap();
    assert!(response(&mut probe).await.ends_with("ok"));
    assert!(
        closed_after(&mut oldest, Duration::from_secs(1))
            .await
            .is_some(),
        "the longest-idle connection was closed"
    );
    newer.write_all(GET).await.unwrap();
    assert!(
        response(&mut newer).await.ends_with("ok"),
        "the other one is still served"
    );
    assert_eq!(
        metric(
            &srv.metrics,
            r#"fleetwatch_http_connections_closed_total{reason="evicted"}"#
        ),
        1.0
    );
    assert_eq!(metric(&srv.metrics, "fleetwatch_http_connections_max"), 2.0);
}

#[tokio::test]
async fn at_the_cap_a_connection_with_a_request_in_flight_is_never_closed() {
    let srv = start(limits(10_000, 10_000, 1)).await;
    let mut streaming = TcpStream::connect(srv.addr).await.unwrap();
    streaming.write_all(STREAM).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut waiting = TcpStream::connect(srv.addr).await.unwrap();
    waiting.write_all(GET).await.unwrap();
    // the stream completes; the new connection is served only once it has
    let r = response(&mut streaming).await;
    assert_eq!(r.matches("tick").count(), 8, "{r}");
    assert!(response(&mut waiting).await.ends_with("ok"));
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections() {
    let srv = start(limits(10_000, 10_000, 16)).await;
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    idle.write_all(GET).await.unwrap();
    assert!(response(&mut idle).await.ends_with("ok"));
    let mut streaming = TcpStream::connect(srv.addr).await.unwrap();
    streaming.write_all(STREAM).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.cancel.cancel();
    assert!(closed_after(&mut idle, Duration::from_secs(1))
        .await
        .is_some());
    let r = response(&mut streaming).await;
    assert_eq!(r.matches("tick").count(), 8, "{r}");
    tokio::time::timeout(Duration::from_secs(3), srv.task)
        .await
        .expect("the server stops once the stream ended")
        .unwrap()
        .unwrap();
}
