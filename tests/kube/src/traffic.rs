//! Real requests at a fixed rate: the load that drives the real nodes' autoscalers.
//!
//! [`Traffic::start`] sends HTTP/1.1 GETs to one address (a Service's ClusterIP, reached through
//! kube-proxy) on a fixed schedule, open loop: a slow answer does not slow the schedule down, so
//! the rate is what the services get. Each request is its own connection (`Connection: close`),
//! as independent callers' would be, and counts as answered only with a 200 within its timeout.
//! The rate can change while it runs ([`Traffic::set_rate`]; 0 pauses), and [`Traffic::stats`]
//! says, per second since the start, how many were answered and how many failed, with the first
//! failures' reasons.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight beyond which a scheduled one is counted failed instead of sent.
const MAX_IN_FLIGHT: u64 = 500;
/// How many failure reasons are kept.
pub(crate) const KEPT_ERRORS: usize = 20;

/// What the traffic has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered with a 200.
    pub ok: u64,
    /// Requests that failed (another status, an I/O error, a timeout, or not sent because too
    /// many were in flight).
    pub failed: u64,
    /// Per second since the start: (answered, failed), by when each request was sent.
    pub per_second: Vec<(u64, u64)>,
    /// The first failures: the second they were sent in (when known: caller pods report what
    /// they got, not when), and why.
    pub errors: Vec<(Option<usize>, String)>,
}

impl Stats {
    fn record(&mut self, second: usize, result: Result<(), String>) {
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, (0, 0));
        }
        match result {
            Ok(()) => {
                self.ok += 1;
                self.per_second[second].0 += 1;
            }
            Err(e) => {
                self.failed += 1;
                self.per_second[second].1 += 1;
                if self.errors.len() < KEPT_ERRORS {
                    self.errors.push((Some(second), e));
                }
            }
        }
    }
}

/// Requests being sent; dropping it stops them.
#[derive(Debug)]
pub struct Traffic {
    started: Instant,
    rate: Arc<AtomicU32>,
    stats: Arc<Mutex<Stats>>,
    in_flight: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Traffic {
    /// Starts `rate` requests per second to `addr` (`IP:PORT`), the `n`th for path `path(n)`.
    pub fn start(
        addr: &str,
        rate: u32,
        path: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> Traffic {
        let rate = Arc::new(AtomicU32::new(rate));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let in_flight = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(schedule(
            addr.to_owned(),
            Arc::clone(&rate),
            Arc::clone(&stats),
            Arc::clone(&in_flight),
            Arc::new(path),
        ));
        Traffic {
            started: Instant::now(),
            rate,
            stats,
            in_flight,
            task,
        }
    }

    /// Changes the rate (requests per second; 0 pauses).
    pub fn set_rate(&self, rate: u32) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// The rate now.
    pub fn rate(&self) -> u32 {
        self.rate.load(Ordering::Relaxed)
    }

    /// What it has seen so far.
    pub fn stats(&self) -> Stats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last whole second's (answered, failed), by when the requests were sent.
    pub fn last_second(&self) -> (u64, u64) {
        let Some(second) = usize::try_from(self.started.elapsed().as_secs())
            .ok()
            .and_then(|s| s.checked_sub(1))
        else {
            return (0, 0);
        };
        self.stats()
            .per_second
            .get(second)
            .copied()
            .unwrap_or((0, 0))
    }

    /// Stops sending, waits (up to [`REQUEST_TIMEOUT`]) for the requests in flight, and says
    /// what it saw.
    pub async fn stop(self) -> Stats {
        self.task.abort();
        let deadline = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1);
        while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stats()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn schedule(
    addr: String,
    rate: Arc<AtomicU32>,
    stats: Arc<Mutex<Stats>>,
    in_flight: Arc<AtomicU64>,
    path: Arc<dyn Fn(u64) -> String + Send + Sync>,
) {
    let start = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut n = 0u64;
    loop {
        let r = rate.load(Ordering::Relaxed);
        if r == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            next = tokio::time::Instant::now();
            continue;
        }
        next += Duration::from_secs(1) / r;
        tokio::time::sleep_until(next).await;
        let second = usize::try_from(start.elapsed().as_secs()).unwrap_or(usize::MAX);
        n += 1;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(second, Err(format!("{MAX_IN_FLIGHT} requests in flight")));
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (addr, stats, in_flight, path) = (
            addr.clone(),
            Arc::clone(&stats),
            Arc::clone(&in_flight),
            path(n),
        );
        tokio::spawn(async move {
            let result = get_once(&addr, &path).await;
            stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(second, result);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One GET of `path` from `addr` (`IP:PORT`) on a connection of its own, within
/// [`REQUEST_TIMEOUT`]: `Ok` for a 200, else why not.
pub async fn get_once(addr: &str, path: &str) -> Result<(), String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, get(addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// One GET on a connection of its own: `Ok` for a 200, else why not.
async fn get(addr: &str, path: &str) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    match text.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(status) => {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
            Err(format!(
                "{status}: {}",
                body.chars().take(200).collect::<String>()
            ))
        }
        None => Err(format!(
            "no HTTP status in {:?}",
            text.chars().take(100).collect::<String>()
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_per_second_and_keep_the_first_errors() {
        let mut s = Stats::default();
        s.record(0, Ok(()));
        s.record(2, Err("502".into()));
        s.record(2, Ok(()));
        assert_eq!(s.ok, 2);
        assert_eq!(s.failed, 1);
        assert_eq!(s.per_second, vec![(1, 0), (0, 0), (1, 1)]);
        assert_eq!(s.errors, vec![(Some(2), "502".to_owned())]);
    }

    #[tokio::test]
    async fn requests_go_out_at_the_rate_and_failures_say_why() {
        // A listener that answers 200 to every other connection and 503 to the rest.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut i = 0u32;
            while let Ok((mut s, _)) = listener.accept().await {
                i += 1;
                let status = if i.is_multiple_of(2) {
                    "200 OK"
                } else {
                    "503 Busy"
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nhi").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let traffic = Traffic::start(&addr, 100, |n| format!("/n/{n}"));
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let stats = traffic.stop().await;
        let total = stats.ok + stats.failed;
        assert!(
            (95..=106).contains(&total),
            "about 100 in a second: {stats:?}"
        );
        assert!(stats.ok > 40 && stats.failed > 40, "{stats:?}");
        assert!(
            stats.errors.iter().all(|(_, e)| e.starts_with("503: hi")),
            "{stats:?}"
        );
    }
}
