//! edge-classify patch: limits on what one client can hold (see PATCHED.md).
//!
//! Upstream tiny_http gives every connection its own thread with no bound, reads header
//! lines of any length and any number of headers, and waits forever for a request head.
//! A handful of slow or hostile clients could therefore hold unbounded threads and memory.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Longest header line (or request line) accepted.
pub const MAX_HEADER_LINE_BYTES: usize = 8 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 100;

static MAX_CONNECTIONS: AtomicUsize = AtomicUsize::new(usize::MAX);
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// Milliseconds; 0 means no deadline.
static HEAD_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

/// Caps open connections (beyond it, new ones are closed at once) and sets the time a
/// connection has to deliver each request head, idle keep-alive time included.
pub fn set(max_connections: usize, head_timeout: Option<Duration>) {
    MAX_CONNECTIONS.store(max_connections.max(1), Ordering::SeqCst);
    let millis = head_timeout.map_or(0, |t| t.as_millis().clamp(1, u64::MAX as u128) as u64);
    HEAD_TIMEOUT_MS.store(millis, Ordering::SeqCst);
}

/// Connections open now.
pub fn open_connections() -> usize {
    OPEN_CONNECTIONS.load(Ordering::SeqCst)
}

pub(crate) fn head_timeout() -> Option<Duration> {
    match HEAD_TIMEOUT_MS.load(Ordering::SeqCst) {
        0 => None,
        millis => Some(Duration::from_millis(millis)),
    }
}

/// One open connection, counted until dropped.
pub(crate) struct ConnectionSlot(());

impl ConnectionSlot {
    pub(crate) fn take() -> Option<Self> {
        let max = MAX_CONNECTIONS.load(Ordering::SeqCst);
        OPEN_CONNECTIONS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| (open < max).then_some(open + 1))
            .ok()
            .map(|_| ConnectionSlot(()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::SeqCst);
    }
}
