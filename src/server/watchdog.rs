//! Connection deadlines. tiny_http reads bodies and writes answers with blocking calls
//! and no socket timeouts, so a client that stops sending (or reading) would hold its
//! thread forever. Each request registers a deadline here; a watchdog thread shuts down
//! the sockets of requests past theirs, which ends the blocked call with an error.
//!
//! The socket is found by its peer address among the process's descriptors (Unix only;
//! elsewhere deadlines are not enforced and a stalled client only holds its thread).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watchdog looks for expired deadlines.
const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Watchdog {
    next_id: AtomicU64,
    deadlines: Mutex<HashMap<u64, (Instant, SocketAddr)>>,
}

/// Removes its deadline when dropped.
pub struct Guard {
    watchdog: Arc<Watchdog>,
    id: u64,
}

impl Guard {
    /// Moves the deadline (e.g. from reading the body to writing the answer).
    pub fn extend(&self, timeout: Option<Duration>) {
        let mut deadlines = self
            .watchdog
            .deadlines
            .lock()
            .expect("no panics under the lock");
        match timeout {
            Some(timeout) => {
                if let Some(entry) = deadlines.get_mut(&self.id) {
                    entry.0 = Instant::now() + timeout;
                }
            }
            None => {
                deadlines.remove(&self.id);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.watchdog
            .deadlines
            .lock()
            .expect("no panics under the lock")
            .remove(&self.id);
    }
}

impl Watchdog {
    /// Starts the watchdog thread; it lives as long as the process.
    pub fn start() -> Arc<Self> {
        let watchdog = Arc::new(Self::default());
        let weak = Arc::downgrade(&watchdog);
        std::thread::Builder::new()
            .name("deadlines".into())
            .spawn(move || {
                while let Some(watchdog) = weak.upgrade() {
                    watchdog.expire(Instant::now());
                    drop(watchdog);
                    std::thread::sleep(TICK);
                }
            })
            .expect("can spawn the watchdog thread");
        watchdog
    }

    /// Watches `peer`'s connection until the guard is dropped; `None` means no deadline.
    pub fn watch(self: &Arc<Self>, peer: Option<SocketAddr>, timeout: Option<Duration>) -> Guard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let (Some(peer), Some(timeout)) = (peer, timeout) {
            let deadline = Instant::now() + timeout;
            self.deadlines
                .lock()
                .expect("no panics under the lock")
                .insert(id, (deadline, peer));
        }
        Guard {
            watchdog: Arc::clone(self),
            id,
        }
    }

    fn expire(&self, now: Instant) {
        let expired: Vec<SocketAddr> = {
            let mut deadlines = self.deadlines.lock().expect("no panics under the lock");
            let ids: Vec<u64> = deadlines
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| deadlines.remove(&id))
                .map(|(_, peer)| peer)
                .collect()
        };
        for peer in expired {
            tracing::warn!(%peer, "connection deadline passed: closing it");
            shutdown_connection(peer);
        }
    }
}

/// Shuts down (without closing: tiny_http owns the descriptor) the TCP socket whose
/// peer is `peer`.
#[cfg(unix)]
pub fn shutdown_connection(peer: SocketAddr) {
    use std::os::fd::BorrowedFd;
    let Ok(entries) = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"))
    else {
        return;
    };
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for two socket calls; if it was closed
        // meanwhile, the calls fail harmlessly (EBADF or ENOTSOCK).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let matches = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .is_some_and(|addr| addr == peer);
        if matches {
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

#[cfg(not(unix))]
pub fn shutdown_connection(_peer: SocketAddr) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_stalled_read_ends_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let watchdog = Watchdog::start();
        let _guard = watchdog.watch(Some(peer), Some(Duration::from_millis(200)));
        let started = Instant::now();
        let mut buf = [0u8; 16];
        // The client never sends: only the watchdog can end this read.
        let read = server_side.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(client);
    }

    #[test]
    fn a_finished_request_is_forgotten() {
        let watchdog = Watchdog::start();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let guard = watchdog.watch(Some(peer), Some(Duration::from_secs(60)));
        assert_eq!(watchdog.deadlines.lock().unwrap().len(), 1);
        drop(guard);
        assert!(watchdog.deadlines.lock().unwrap().is_empty());
    }
}
