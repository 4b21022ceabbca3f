//! A bare WASI 0.2 HTTP pass-through: each request is forwarded as is to `BACKEND_URL`
//! (`http://host:port`), and the backend's answer is streamed back chunk by chunk. No checks,
//! no limits, no timeouts: the floor the gateway's Spin component is measured against.

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

struct Component;

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let _ = forward(request, response_out);
    }
}

wasip2::http::proxy::export!(Component with_types_in wasip2);

fn backend() -> Option<(Scheme, String)> {
    let url = wasip2::cli::environment::get_environment().into_iter().find(|(k, _)| k == "BACKEND_URL")?.1;
    let (scheme, authority) = url.split_once("://")?;
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    Some((scheme, authority.trim_end_matches('/').to_string()))
}

fn forward(request: IncomingRequest, response_out: ResponseOutparam) -> Option<()> {
    let (scheme, authority) = backend()?;
    let headers = Fields::new();
    for (name, value) in request.headers().entries() {
        if name != "host" {
            let _ = headers.append(&name, &value);
        }
    }
    let outgoing = OutgoingRequest::new(headers);
    outgoing.set_method(&request.method()).ok()?;
    outgoing.set_scheme(Some(&scheme)).ok()?;
    outgoing.set_authority(Some(&authority)).ok()?;
    outgoing.set_path_with_query(request.path_with_query().as_deref()).ok()?;
    let outgoing_body = outgoing.body().ok()?;
    let pending = wasip2::http::outgoing_handler::handle(outgoing, None).ok()?;
    {
        let incoming_body = request.consume().ok()?;
        let input = incoming_body.stream().ok()?;
        let output = outgoing_body.write().ok()?;
        copy(&input, &output);
        drop(output);
        drop(input);
        IncomingBody::finish(incoming_body);
    }
    OutgoingBody::finish(outgoing_body, None).ok()?;
    pending.subscribe().block();
    let response = pending.get()?.ok()?.ok()?;
    let answer = OutgoingResponse::new(response.headers().clone());
    answer.set_status_code(response.status()).ok()?;
    let answer_body = answer.body().ok()?;
    ResponseOutparam::set(response_out, Ok(answer));
    let backend_body = response.consume().ok()?;
    {
        let input = backend_body.stream().ok()?;
        let output = answer_body.write().ok()?;
        copy(&input, &output);
    }
    OutgoingBody::finish(answer_body, None).ok()
}

/// Copies until the input ends, flushing each chunk as it arrives.
fn copy(input: &InputStream, output: &OutputStream) {
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(bytes) if bytes.is_empty() => continue,
            Ok(bytes) => {
                if output.blocking_write_and_flush(&bytes).is_err() {
                    return;
                }
            }
            Err(StreamError::Closed) | Err(StreamError::LastOperationFailed(_)) => return,
        }
    }
}
