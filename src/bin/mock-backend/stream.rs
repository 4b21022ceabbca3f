//! Writing a planned Server-Sent Events response as chunks, with its pacing and
//! its ending (complete or reset).

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};

use crate::peer::{pause_watching, peer_closed};
use crate::reply::{After, Ending, StreamPlan};
use crate::response::{response_head, write_chunk, Framing};
use crate::state::State;

pub(crate) fn write_stream(conn: &mut TcpStream, state: &State, plan: &StreamPlan, close: bool) -> After {
    let _open = state.stats.stream_opened();
    if send_events(conn, plan, close, state.config.head_with_first_token).is_err() {
        state.stats.client_disconnected();
        return After::Abort;
    }
    match plan.ending {
        Ending::Reset => {
            let _ = conn.shutdown(Shutdown::Both);
            After::Abort
        }
        Ending::Complete if close => After::Close,
        Ending::Complete => After::KeepAlive,
    }
}

/// Writes the head — at once, or (`head_late`, llama-server's way) only with the first event — then
/// each event after its delay.
fn send_events(conn: &mut TcpStream, plan: &StreamPlan, close: bool, head_late: bool) -> io::Result<()> {
    let mut headers = vec![("cache-control", "no-cache".to_owned())];
    headers.extend(plan.headers.iter().cloned());
    let head = response_head(200, Some("text/event-stream; charset=utf-8"), &headers, Framing::Chunked, close);
    let mut head = Some(head);
    if !head_late {
        conn.write_all(head.take().unwrap_or_default().as_bytes())?;
    }
    for event in &plan.events {
        if event.delay.is_zero() {
            if peer_closed(conn) {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
        } else {
            pause_watching(conn, event.delay)?;
        }
        if let Some(head) = head.take() {
            conn.write_all(head.as_bytes())?;
        }
        let frame = match event.name {
            Some(name) => format!("event: {name}\ndata: {}\n\n", event.data),
            None => format!("data: {}\n\n", event.data),
        };
        write_chunk(conn, frame.as_bytes())?;
    }
    if let Some(head) = head {
        conn.write_all(head.as_bytes())?;
    }
    if plan.ending == Ending::Complete {
        conn.write_all(b"0\r\n\r\n")?;
        conn.flush()?;
    }
    Ok(())
}
