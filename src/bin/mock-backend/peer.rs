//! Noticing a client that went away: non-blocking peer checks, pauses that
//! watch the peer, and the `hang` fault that waits for it to leave.

use std::io;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::state::State;

/// How long a `hang` fault keeps a request open at most.
const HANG_LIMIT: Duration = Duration::from_secs(600);
/// Granularity of sleeps that watch for the peer going away.
pub(crate) const POLL_SLICE: Duration = Duration::from_millis(20);

/// Whether the peer has closed its end (or the socket failed), without blocking.
/// A client that half-closes after sending its request looks the same, which no
/// HTTP client the tests use does.
pub(crate) fn peer_closed(conn: &TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return true;
    }
    let peeked = conn.peek(&mut [0; 1]);
    let restored = conn.set_nonblocking(false).is_ok();
    match peeked {
        Ok(0) => true,
        Ok(_) => !restored,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => !restored,
        Err(_) => true,
    }
}

/// Sleeps for `duration` in short slices; fails as soon as the peer goes away.
pub(crate) fn pause_watching(conn: &TcpStream, duration: Duration) -> io::Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(POLL_SLICE));
        if peer_closed(conn) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
    }
}

/// Holds the request without answering until the client leaves (or the cap).
pub(crate) fn hang(conn: &TcpStream, state: &State) {
    let deadline = Instant::now() + HANG_LIMIT;
    while Instant::now() < deadline {
        thread::sleep(POLL_SLICE);
        if peer_closed(conn) {
            state.stats.client_disconnected();
            return;
        }
    }
}
