//! A bad network between one host and the server, in userspace: a UDP relay (QUIC is UDP) that
//! delays, jitters, loses, duplicates and reorders datagrams both ways, and can cut the host off
//! entirely (a partition) and heal it again. This kernel has no `netem` qdisc, so the campaign
//! impairs links with this instead. Decisions come from a seeded stream, drawn in arrival order.

use irec_world::rng::{self, Rng};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the link does to every datagram, each way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Impairment {
    /// One-way delay, in milliseconds (the round trip is twice this).
    pub delay_ms: u64,
    /// Extra one-way delay drawn uniformly from [0, jitter], in milliseconds; datagrams overtake
    /// each other when it exceeds their spacing.
    pub jitter_ms: u64,
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by another `delay_ms` (reordering beyond jitter).
    pub reorder: f64,
}

impl Default for Impairment {
    /// 100 ms round trip, 5% loss, as the R7 campaign runs.
    fn default() -> Self {
        Impairment { delay_ms: 50, jitter_ms: 10, loss: 0.05, duplicate: 0.01, reorder: 0.01 }
    }
}

/// What a link did.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    /// Dropped because the host was partitioned.
    pub partitioned: AtomicU64,
}

/// A running link: datagrams to `listen` go to the server as if from one host.
pub struct Link {
    pub listen: SocketAddr,
    partitioned: Arc<AtomicBool>,
    pub stats: Arc<LinkStats>,
    task: JoinHandle<()>,
}

struct Shared {
    impairment: Impairment,
    rng: Mutex<Rng>,
    partitioned: Arc<AtomicBool>,
    stats: Arc<LinkStats>,
}

impl Shared {
    /// The delays (one per copy) at which to deliver a datagram; empty: dropped.
    fn fate(&self) -> Vec<Duration> {
        if self.partitioned.load(Ordering::Relaxed) {
            self.stats.partitioned.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let i = self.impairment;
        let Ok(mut r) = self.rng.lock() else { return Vec::new() };
        if r.random_bool(i.loss.clamp(0.0, 1.0)) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let copies = if r.random_bool(i.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
        if copies == 2 {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        (0..copies)
            .map(|_| {
                let mut ms = i.delay_ms + r.random_range(0..=i.jitter_ms);
                if r.random_bool(i.reorder.clamp(0.0, 1.0)) {
                    ms += i.delay_ms.max(1);
                }
                Duration::from_millis(ms)
            })
            .collect()
    }

    fn send_later(self: &Arc<Self>, socket: Arc<UdpSocket>, bytes: Vec<u8>, to: SocketAddr) {
        for delay in self.fate() {
            let (socket, bytes, stats) = (socket.clone(), bytes.clone(), self.stats.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if socket.send_to(&bytes, to).await.is_ok() {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
}

impl Link {
    /// Listens on `listen` and relays to `server`, each client from its own socket bound to
    /// `upstream` (so the server sees one peer per client, as without the link). Must be called
    /// within a tokio runtime.
    pub async fn start(listen: SocketAddr, upstream: IpAddr, server: SocketAddr, impairment: Impairment, seed: u64) -> std::io::Result<Link> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let listen = front.local_addr()?;
        let partitioned = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LinkStats::default());
        let shared = Arc::new(Shared { impairment, rng: Mutex::new(rng::rng(seed)), partitioned: partitioned.clone(), stats: stats.clone() });
        let task = tokio::spawn(async move {
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                let back = match clients.get(&from) {
                    Some(s) => s.clone(),
                    None => {
                        let Ok(s) = UdpSocket::bind(SocketAddr::new(upstream, 0)).await else { continue };
                        let s = Arc::new(s);
                        clients.insert(from, s.clone());
                        // The server's answers to this client, impaired on their way back.
                        let (s2, front2, shared2) = (s.clone(), front.clone(), shared.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = s2.recv_from(&mut buf).await {
                                shared2.send_later(front2.clone(), buf[..n].to_vec(), from);
                            }
                        });
                        s
                    }
                };
                shared.send_later(back, buf[..n].to_vec(), server);
            }
        });
        Ok(Link { listen, partitioned, stats, task })
    }

    /// Cuts the host off (`true`) or heals it (`false`).
    pub fn partition(&self, cut: bool) {
        self.partitioned.store(cut, Ordering::Relaxed);
    }

    pub fn close(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_are_delayed_lost_and_cut_as_configured() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let clean = Impairment { delay_ms: 20, jitter_ms: 0, loss: 0.0, duplicate: 0.0, reorder: 0.0 };
        let link = Link::start("127.0.0.1:0".parse().unwrap(), "127.0.0.1".parse().unwrap(), server, clean, 1).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        let t = tokio::time::Instant::now();
        client.send_to(b"ping", link.listen).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(t.elapsed() >= Duration::from_millis(40), "two one-way delays");
        link.partition(true);
        client.send_to(b"lost", link.listen).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await.is_err(), "a partition drops everything");
        assert_eq!(link.stats.partitioned.load(Ordering::Relaxed), 1);
        link.close();

        // A lossy link drops about what it is told to (seeded, so exactly the same each run).
        let lossy = Impairment { delay_ms: 0, jitter_ms: 0, loss: 0.5, duplicate: 0.0, reorder: 0.0 };
        let shared = Shared { impairment: lossy, rng: Mutex::new(rng::rng(7)), partitioned: Arc::new(AtomicBool::new(false)), stats: Arc::default() };
        let kept = (0..1000).filter(|_| !shared.fate().is_empty()).count();
        assert!((400..600).contains(&kept), "{kept} of 1000 kept at 50% loss");
    }
}
