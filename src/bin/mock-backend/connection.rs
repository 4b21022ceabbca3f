//! One connection: read requests in turn, route them, carry out each reply
//! (waiting out a non-stream generation first), and decide whether to keep the
//! connection, close it, or drop it.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::errors::vllm_error;
use crate::log;
use crate::peer::{hang, pause_watching};
use crate::reply::{After, Ending, Reply};
use crate::request::{read_request, ReadError};
use crate::response::write_response;
use crate::routes::route;
use crate::state::State;
use crate::stream::write_stream;

pub(crate) fn serve_connection(conn: TcpStream, state: &State) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let request = match read_request(&mut reader, &mut writer) {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Malformed(message)) => return reject(&mut reader, &mut writer, 400, message),
            Err(ReadError::TooLarge) => return reject(&mut reader, &mut writer, 413, "request too large"),
        };
        if state.config.verbose {
            log(&format!("mock-backend: {} {}", request.method, request.path));
        }
        let close = request.wants_close();
        let reply = route(state, &request);
        match execute(reply, state, &mut writer, close) {
            After::KeepAlive => {}
            After::Close => return close_gracefully(&mut reader, &writer),
            After::Abort => return,
        }
    }
}

/// Answers an unreadable request with a vLLM-style error and closes.
fn reject(reader: &mut impl Read, conn: &mut TcpStream, status: u16, message: &str) {
    let response = vllm_error(status, "BadRequestError", message);
    if write_response(conn, &response, true).is_ok() {
        close_gracefully(reader, conn);
    }
}

/// Closes after the response: half-close, then drain what the client still
/// sends so the kernel does not answer it with a reset that could discard the
/// response before the client reads it.
fn close_gracefully(reader: &mut impl Read, conn: &TcpStream) {
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = io::copy(&mut reader.take(1024 * 1024), &mut io::sink());
}

fn execute(reply: Reply, state: &State, conn: &mut TcpStream, close: bool) -> After {
    match reply {
        Reply::Respond(response) => match write_response(conn, &response, close) {
            Ok(()) if !close => After::KeepAlive,
            Ok(()) => After::Close,
            Err(_) => After::Abort,
        },
        Reply::Stream(plan) => write_stream(conn, state, &plan, close),
        Reply::Generated { response, takes, ending } => {
            if generate(conn, state, takes).is_err() {
                state.stats.client_disconnected();
                return After::Abort;
            }
            match ending {
                Ending::Complete => execute(Reply::Respond(response), state, conn, close),
                Ending::Reset => {
                    let half = response.body.len() / 2;
                    let mut bytes = response.head(close).into_bytes();
                    bytes.extend_from_slice(&response.body[..half]);
                    let _ = conn.write_all(&bytes);
                    let _ = conn.shutdown(Shutdown::Both);
                    After::Abort
                }
            }
        }
        Reply::Hang => {
            hang(conn, state);
            After::Abort
        }
    }
}

/// The wait of a non-stream generation: silent on the wire, counted in
/// `non_stream_in_progress`, and cut short when the client leaves.
fn generate(conn: &TcpStream, state: &State, takes: Duration) -> io::Result<()> {
    let _generating = state.stats.generation_started();
    if takes.is_zero() {
        return Ok(());
    }
    pause_watching(conn, takes)
}
