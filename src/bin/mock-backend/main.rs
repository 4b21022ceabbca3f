//! A mock inference backend that imitates vLLM's OpenAI-compatible HTTP server.
//!
//! It exists so the gateway can be developed (`make dev`) and tested end to end
//! without a GPU: it speaks plain HTTP/1.1 (keep-alive, `Content-Length` and
//! chunked request bodies), answers with vLLM's response and error shapes, streams
//! Server-Sent Events with configurable pacing, injects faults on request, and
//! exposes counters that let tests observe what the gateway did to it.
//!
//! # Command line
//!
//! ```text
//! mock-backend [--addr 127.0.0.1:0] [--model NAME]... [--chunks N] [--chunk-delay-ms D]
//!              [--prefill-ms P] [--max-model-len N] [--embedding-dims N]
//!              [--api-key KEY] [--strict-request-id] [--head-with-first-token]
//!              [--name NAME] [--verbose]
//! ```
//!
//! After binding it prints exactly one line, `listening on http://HOST:PORT`, to
//! stdout. `--model` may be repeated (default `mock-llama`); `--chunks` is the
//! number of completion tokens (default 8); `--chunk-delay-ms` is the time each
//! token takes (default 0); `--prefill-ms` the time to the first token (default 0;
//! see *Timing*); `--max-model-len` the context window, enforced as vLLM does
//! (see *Context length*; without it nothing is enforced and `/v1/models` says
//! 4096); `--embedding-dims` the length of `/v1/embeddings` vectors (default 8, at
//! most 65536); with `--api-key`, every `/v1/*` request needs
//! `Authorization: Bearer KEY` or gets vLLM's `401 {"error":"Unauthorized"}`;
//! `--strict-request-id` behaves like llama-cpp-python's server: a request whose
//! `x-request-id` is present and not what Python's `uuid.UUID` parses gets an
//! empty-bodied `400` (`content-length: 0`, no content type) before any route or
//! API-key check, on every path but `/mock/*` (see `request_id.rs` for exactly
//! which forms pass: `8-4-4-4-12`, 32 bare hex digits, `{…}`, `urn:uuid:…`, and
//! a few looser ones), and every other answer carries `x-request-id`: the
//! request's, or a fresh `uuid4().hex` (vLLM, the default, sends none);
//! `--head-with-first-token` sends a stream's status and headers only with its first event,
//! after the prefill, as llama.cpp's `llama-server` does (its first result decides between an
//! HTTP error and a 200) and Ollama does (Go writes the head on the first write); vLLM, SGLang
//! and TGI, and the mock by default, send it as soon as they take the request;
//! `--verbose` logs one line per request to stderr.
//!
//! # Endpoints
//!
//! * `GET /health`: 200 with an empty body.
//! * `GET /v1/models`: the served models.
//! * `GET /v1/models/{model}`: one of them (OpenAI's retrieve-model call; the name may
//!   hold slashes), the same card as in the list; an unknown name gets the 404 vLLM
//!   answers for an unknown model elsewhere, ``{"error":{"message":"The model `x` does
//!   not exist.","type":"NotFoundError","param":null,"code":404}}``. (vLLM itself
//!   serves no such route: every name gets FastAPI's `{"detail":"Not Found"}` there.)
//! * `POST /v1/chat/completions`: a completion whose text is `N` tokens
//!   `"tok0 tok1 … tok{N-1} "`, as JSON or, with `"stream": true`, as SSE chunks
//!   (role chunk, one chunk per token, finish chunk, optional usage chunk, `[DONE]`).
//!   A completion limit below `N` truncates it with `finish_reason: "length"`; the
//!   limit is `max_completion_tokens`, or `max_tokens` when that is absent or 0
//!   (vLLM's `max_completion_tokens or max_tokens`). Prompt tokens are counted
//!   deterministically as `(total UTF-8 bytes of every message's text content) / 4
//!   + number of messages`.
//! * `POST /v1/completions` (OpenAI's legacy API, vLLM's `serving_completion`):
//!   `prompt` is a string, an array of strings, an array of token ids (one prompt) or
//!   an array of token-id arrays; missing or empty is vLLM's 400 "Either prompt or
//!   prompt_embeds must be provided and non-empty." (`param: "prompt"`). Each prompt
//!   counts tokens like a chat message (`bytes / 4 + 1`; token ids their count, read
//!   back as the mock's tokens `"tok{id} "` when echoed) and is checked against the
//!   context on its own. `max_tokens` defaults to 16, as in vLLM's `CompletionRequest`
//!   (also when `null`), so with `--max-model-len` a long prompt without `max_tokens`
//!   gets the `max_tokens` 400; `0` is refused ("max_tokens must be at least 1, got
//!   0.") unless `echo` is set, which then answers the prompt alone (`finish_reason:
//!   "length"`, 0 completion tokens). `n` (1–128) choices per prompt, indexed
//!   prompt-major; `best_of` below `n` is vLLM ≤ 0.6's 400 ("best_of must be greater
//!   than or equal to n, got n=2 and best_of=1."), otherwise ignored as today's vLLM
//!   does. `echo` prepends the prompt. `logprobs` 0–20 (vLLM's default
//!   `--max-logprobs`; more is its 400 "Requested sample logprobs of 21, which is
//!   greater than max allowed: 20 (parameter=logprobs, value=21)") adds
//!   `{"text_offset","token_logprobs","tokens","top_logprobs"}`: each token's
//!   log-probability is -0.25 and `top_logprobs` lists it with `alt1 `… (`logprobs`
//!   entries, at least 1) at -1.25, -2.25…; an echoed prompt is one entry with `null`s.
//!   `suffix` is vLLM's 400 "suffix is not currently supported". `stream_options`
//!   without `stream` is its 400 (`param: "stream_options"`). Answer
//!   `{"id":"cmpl-mock-N","object":"text_completion","created","model","choices":
//!   [{"index","text","logprobs","finish_reason","stop_reason":null}],"usage"}`. With
//!   `"stream": true`, one chunk per choice per token, `{"id","object":
//!   "text_completion","created","model","choices":[{"index","text","logprobs",
//!   "finish_reason","stop_reason"}]}` (no `usage` key; the first chunk carries the
//!   echoed prompt, the last token's the finish reason, no empty role chunk), then
//!   with `stream_options.include_usage` a chunk with `"choices":[]` and `usage`, then
//!   `data: [DONE]`.
//! * `POST /v1/embeddings` (vLLM's `serving_embedding`): `input` is a string, an
//!   array of strings, an array of token ids (one input) or an array of token-id
//!   arrays; anything else (an empty array, an empty id list, negative or fractional
//!   ids, mixed arrays) is a 400. One vector per input, `--embedding-dims` long,
//!   derived from the SHA-256 of the input's JSON text and L2-normalised (exactly how
//!   in `vectors.rs`), so the same input always gets the same vector. Answer
//!   `{"id":"embd-mock-N","object":"list","created","model","data":[{"index","object":
//!   "embedding","embedding"}],"usage":{"prompt_tokens","total_tokens",
//!   "completion_tokens":0}}` (vLLM's `UsageInfo`; `prompt_tokens` counted like chat's:
//!   a text is `bytes / 4 + 1`, token ids their count). `encoding_format` is `float`
//!   (default) or `base64` (the float32 values' little-endian bytes in standard
//!   base64, as OpenAI and vLLM send them); vLLM's `bytes` formats are refused.
//!   `dimensions` keeps the leading components and normalises again: every mock model
//!   behaves as a matryoshka model (vLLM refuses `dimensions` with `Model "…" does not
//!   support matryoshka representation…` for others; use `mock.status` to imitate
//!   that); more than the model has gives them all, below 1 is vLLM's 400 `Dimensions
//!   must be greater than 0`. `user` is accepted; `stream` is ignored, as vLLM ignores
//!   unknown fields.
//! * `POST /v1/responses` (the Responses API, vLLM's `serving_responses` with
//!   `VLLM_ENABLE_RESPONSES_API_STORE=1`): `input` is a string or a list of items —
//!   messages `{"type"?: "message", "role": user|assistant|system|developer,
//!   "content": string or typed parts (`input_text`, `output_text`, `input_image`…)}`,
//!   `function_call` (`call_id`, `name`, `arguments`), `function_call_output`
//!   (`call_id`, `output`), `reasoning`, `item_reference`; other shapes are a 400.
//!   Input tokens are counted like chat's: every item's text bytes (message content,
//!   call arguments, call output) over 4, plus one per item, plus `instructions` as
//!   one more message, plus the previous response's `total_tokens` with
//!   `previous_response_id` (vLLM puts its input and output first); an id the store
//!   does not hold (or another backend made) is vLLM's 404 ``{"error":{"message":
//!   "Response with id '…' not found.","type":"invalid_request_error","param":
//!   "response_id","code":404}}``. `max_output_tokens` limits the output (`0` is a
//!   400) and, as in vLLM, is clamped to what the context leaves, never refused; a
//!   cut answer has `status: "incomplete"` and `incomplete_details: {"reason":
//!   "max_output_tokens"}`. `tools`, `tool_choice`, `temperature`, `top_p`,
//!   `metadata`, `user`, `text`, `reasoning`… are echoed in the Response object (the
//!   answer is always a text message, never a tool call); `prompt` templates are
//!   vLLM's 400. The Response object: `{"id":"resp_<32 hex>","object":"response",
//!   "created_at","status":"completed","model","output":[{"type":"message","id":
//!   "msg_…","status":"completed","role":"assistant","content":[{"type":
//!   "output_text","text","annotations":[],"logprobs":null}]}],"usage":
//!   {"input_tokens","input_tokens_details":{"cached_tokens":0},"output_tokens",
//!   "output_tokens_details":{"reasoning_tokens":0},"total_tokens"},"error":null,
//!   "incomplete_details":null,"instructions","max_output_tokens" (the limit in
//!   force, or `null`),"background","previous_response_id","tools",…}`. With
//!   `"stream": true` every event has an `event:` line naming its `type`, and a
//!   `sequence_number` counting from 0: `response.created` and `response.in_progress`
//!   (the object with `status: "in_progress"`, `output: []`, `usage: null`),
//!   `response.output_item.added` (the message, `in_progress`, no content),
//!   `response.content_part.added` (an empty `output_text`), one
//!   `response.output_text.delta` per token (`item_id`, `output_index` 0,
//!   `content_index` 0, `delta`, `logprobs: []`), `response.output_text.done`
//!   (`text`), `response.content_part.done`, `response.output_item.done`, and
//!   `response.completed` with the finished object (vLLM sends `completed` for an
//!   incomplete answer too); no `[DONE]` follows. `store` (default true) keeps the
//!   response (the last 4096) once its generation is over; `background: true`
//!   (needs `store`, else vLLM's 400) answers at once with the `queued` object and
//!   the stored response turns `completed` (or `failed`, with `error_event`) when the
//!   generation would have ended; with `stream` as well it streams as in the
//!   foreground.
//! * `GET /v1/responses/{id}`: a stored response as it stands now (query parameters
//!   such as `stream` are ignored); unknown, or still generating in the foreground, is
//!   the 404 above. `DELETE /v1/responses/{id}`: OpenAI's
//!   `{"id","object":"response.deleted","deleted":true}`, or that 404 (vLLM has no
//!   delete route; nor does the mock serve vLLM's `POST /v1/responses/{id}/cancel`).
//! * `GET /mock/last-request`: the last generation request (`method`, `path`,
//!   lowercased `headers`, `body` parsed as JSON or `null`).
//! * `GET /mock/requests/{id}`: the generation request that carried `x-request-id:
//!   {id}` (the last 4096 are kept), so tests running in parallel can each find theirs.
//! * `GET /mock/stats`: `requests`, `open_streams`, `max_open_streams`,
//!   `client_disconnects`, `health_checks` (`GET /health` calls), and
//!   `non_stream_in_progress` (non-stream generations still being waited out, a
//!   gauge like `open_streams`); `POST /mock/reset-stats`
//!   zeroes the counters (the gauges stay, and the high-water mark restarts from
//!   the streams open at that moment).
//!
//! Every `POST` to a generation endpoint (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`) is counted in `requests` and recorded before
//! the request id and the API key are checked, so tests can see what a rejected
//! request carried; `GET` and `DELETE` of stored responses are neither. Other paths get FastAPI's `404
//! {"detail":"Not Found"}`, other methods on a served path its `405`.
//!
//! # Timing (vLLM's)
//!
//! A non-stream answer is written only when the whole generation is over:
//! `prefill + delay × completion tokens` pass with nothing at all on the wire, not
//! even the status line (vLLM builds the JSON response after the last token). A
//! stream's headers go out at once (Starlette's `StreamingResponse`); the role
//! chunk follows after `prefill`, then each token `delay` after the previous chunk,
//! then the finish chunk, the usage chunk and `[DONE]` at once. A text completion
//! has no role chunk: its first token's chunks come after `prefill`, and the finish
//! reason rides on the last token's. A Responses stream sends `response.created`
//! and `response.in_progress` at once, the item, its part and the first delta after
//! `prefill`, and the closing events at once after the last delta. Errors found
//! before generation (unknown model, bad JSON, context length) are answered at once.
//! An embedding generates nothing: its answer goes out whole once `prefill` is over
//! (`delay` does not apply).
//!
//! # Context length (vLLM's)
//!
//! With `--max-model-len N`, a prompt of `N` tokens or more gets vLLM's 400
//! `{"error":{"message":"This model's maximum context length is N tokens. However,
//! your request has P input tokens. Please reduce the length of the input messages.
//! (parameter=input_tokens, value=P)","type":"BadRequestError","param":"input_tokens",
//! "code":400}}`; a prompt plus limit over `N` gets `"'max_tokens' or
//! 'max_completion_tokens' is too large: M. This model's maximum context length is N
//! tokens and your request has P input tokens (M > N - P). (parameter=max_tokens,
//! value=M)"` with `"param":"max_tokens"` (stream or not: it is checked before any
//! generation). Without a limit the completion may use `N - P` tokens. These are
//! today's vLLM texts; vLLM up to 0.9 said "… However, you requested M+P tokens (P in
//! the messages, M in the completion). Please reduce the length of the messages or
//! completion." with `param: null`. An embedding input may fill the context (nothing
//! is generated); one of more than `N` tokens gets vLLM's 400 "This model's maximum
//! context length is N tokens. However, you requested P tokens in the input for
//! embedding generation. Please reduce the length of the input.
//! (parameter=input_tokens, value=P)" with `"param":"input_tokens"`. A text
//! completion's prompts are each checked as chat's messages, with `max_tokens`
//! counting as 16 when absent. A Responses input of `N` tokens or more gets vLLM's
//! `{"error":{"message":"The engine prompt length P exceeds the max_model_len N.
//! Please reduce prompt.","type":"invalid_request_error","param":"input","code":400}}`,
//! and `max_output_tokens` is clamped to `N - P`.
//!
//! # Per-request controls
//!
//! A request to any generation endpoint may carry an extra body field
//! `"mock": {"chunks": N, "delay_ms": D, "prefill_ms": P, "fault": "...", "status": S,
//! "retry_after": "...", "fault_on": "NAME"}` overriding the CLI defaults
//! (`--chunks`, `--chunk-delay-ms`, `--prefill-ms`). Engine failures leak internals
//! as vLLM's `str(exception)` does: `"CUDA error: an illegal memory access at
//! /srv/secret/model.py:42 (http://10.1.2.3:8000)"`. Faults, by endpoint (chat =
//! `/v1/chat/completions`, text = `/v1/completions`, responses = `/v1/responses`,
//! embeddings = `/v1/embeddings`):
//!
//! | `fault` | every endpoint, stream or not, unless said otherwise |
//! |---|---|
//! | `500` | at once, 500 `{"error":{"message":"internal engine failure at /srv/secret/path","type":"InternalServerError",…}}` |
//! | `429` | at once, 429 `RateLimitError` with `retry-after: 1` |
//! | `400` | at once, 400 "This model's maximum context length is 4096 tokens." |
//! | `hang` | never answer; give up when the client leaves (a client disconnect) or after 10 minutes |
//! | `garbage` | at once, 200 `application/json` with the bytes `\x00\xffnot json` |
//! | `plain_text_500` | at once, 500 `text/plain` `upstream exploded` |
//! | `malformed_sse` | at once, an event stream `data: {not json` then `data: [DONE]` |
//! | `reset` | streams: the events through the 2nd token (chat: role chunk and 2 tokens; text: every choice's 2 tokens; responses: `created` … 2nd delta), then the socket is shut down without the terminating chunk; non-streams (and embeddings): after the generation (embeddings: the prefill), the head and half the body |
//! | `error_event` | chat and text streams: 2 tokens, then exactly what today's vLLM yields on an exception in `chat_completion_stream_generator` / `completion_stream_generator`, `data: {"error": {"message": …, "type": "InternalServerError", "param": null, "code": 500}}` (Python `json.dumps` spacing), then `data: [DONE]`, and a normal end of body; responses streams: 2 deltas, then the Responses API's error event `event: error` / `data: {"type":"error","code":"server_error","message":…,"param":null,"sequence_number":K}` and a normal end, no `[DONE]` (OpenAI's shape; vLLM itself breaks the stream off, see `error_event_legacy`); non-streams: 500 with that `{"error":…}` once the 3rd token would be ready (embeddings: after the prefill) |
//! | `error_event_legacy` | chat and text streams: the same with vLLM ≤ 0.9's event, `data: {"error": {"object": "error", "message": …, "type": "BadRequestError", "param": null, "code": 400}}` (old `create_streaming_error_response(str(e))`), then `[DONE]`; responses streams: what vLLM does today, whose `{"error": …}` payload fails validation as a streaming event: after 2 deltas the stream breaks off without its terminating chunk; non-streams: 400 with the old top-level `{"object":"error","message":…,"type":"BadRequestError","param":null,"code":400}` |
//!
//! A `background` Responses request gets `status` and the faults that answer at once
//! like any other; with `reset` it is answered `queued` and completes, with
//! `error_event`/`error_event_legacy` it is answered `queued` and turns `failed`. A
//! foreground response whose generation fails is not stored.
//!
//! `"status": N` (400–599) answers status `N` at once, stream or not, with vLLM's
//! error body for it: `{"error":{"message":PHRASE,"type":TYPE,"param":null,"code":N}}`
//! where `TYPE` is vLLM's own name for 400/404/500/501 (`BadRequestError`,
//! `NotFoundError`, `InternalServerError`, `NotImplementedError`) and otherwise the
//! status phrase, as vLLM's `HTTPException` handler writes it (`"Service
//! Unavailable"`); 401 is `{"error":"Unauthorized"}`. It wins over `fault`.
//! `"retry_after": "<any string>"` (only with `status`) adds `retry-after` with that
//! value verbatim, to test the clamping of absurd ones (no control characters).
//! `status` and the faults that answer at once act after the request's own
//! validation (a malformed body, an unknown model or a bad field is still its 400 or
//! 404) and before the context, `previous_response_id` and store checks.
//!
//! With `"fault_on": "NAME"`, only the instance started with `--name NAME` applies
//! the fault (or status); the others answer normally (to fail one backend and not
//! its failover).
//!
//! A client that goes away while a stream is being written (a failed write, or the
//! peer closing during a pause) or while a non-stream answer is being generated
//! stops generation and counts as a client disconnect; so does a client abandoning
//! a `hang`.
//!
//! # Layout
//!
//! This file holds the accept loop; each sibling module has one job: `cli` (the
//! command line and its limits), `connection` (one connection's request/reply
//! loop, waiting out non-stream generations), `request` and `response` (HTTP/1.1
//! on the wire), `routes` (dispatch by method and path), `request_id`
//! (llama-cpp-python's request-id check), `models` (the model list and cards),
//! `intake` (what every generation endpoint reads first: body, model, canned
//! replies), `tokens` (the mock's tokenizer and prompt-token rule), `context`
//! (vLLM's context-length rules), `controls` (the `mock` body field), `faults`
//! (fault modes), `plan` (the reply to a generation: its shape, pacing and fault
//! endings, for any endpoint's `Generation`), one module reading each endpoint's
//! request — `chat`, `completions`, `responses`, `embeddings` — and one rendering
//! each generation — `completion` (chat), `text_completion`, `response_object`,
//! `vectors` (embedding vectors and their encodings) — `response_store` (stored
//! Responses), `reply` (the planned reply, shared by the planners and the writers),
//! `stream` (writing SSE), `peer` (noticing a client that left), `errors` (vLLM's
//! error bodies) and `state` (counters, recorded requests, the response store).
//! Planners (`routes`, the endpoint modules, `plan`, `faults`) and writers
//! (`connection`, `stream`) meet only in `reply`; renderers implement `plan`'s
//! `Generation` and import no endpoint module, so no two modules import each other.
// A native test server, not the edge: it uses the OS clock, threads and sockets directly.
#![allow(clippy::disallowed_methods)]

mod chat;
mod cli;
mod completion;
mod completions;
mod connection;
mod context;
mod controls;
mod embeddings;
mod errors;
mod faults;
mod intake;
mod models;
mod peer;
mod plan;
mod reply;
mod request;
mod request_id;
mod response;
mod response_object;
mod response_store;
mod responses;
mod routes;
mod state;
mod stream;
mod text_completion;
mod tokens;
mod vectors;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use cli::{parse_args, CliError, USAGE};
use connection::serve_connection;
use peer::POLL_SLICE;
use state::State;

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(CliError::Help) => {
            let _ = writeln!(io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(CliError::Invalid(message)) => {
            log(&format!("mock-backend: {message}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&config.addr) {
        Ok(listener) => listener,
        Err(err) => {
            log(&format!("mock-backend: cannot bind {}: {err}", config.addr));
            return ExitCode::FAILURE;
        }
    };
    let Ok(local) = listener.local_addr() else {
        log("mock-backend: cannot read the bound address");
        return ExitCode::FAILURE;
    };
    announce(local);
    accept_loop(&listener, &Arc::new(State::new(config)));
    ExitCode::SUCCESS
}

/// Prints the one line tests read to learn the port.
fn announce(local: SocketAddr) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{local}");
    let _ = stdout.flush();
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let state = Arc::clone(state);
                let spawned =
                    thread::Builder::new().name("mock-conn".to_owned()).spawn(move || serve_connection(stream, &state));
                if let Err(err) = spawned {
                    log(&format!("mock-backend: cannot spawn a connection thread: {err}"));
                }
            }
            Err(err) => {
                log(&format!("mock-backend: accept failed: {err}"));
                thread::sleep(POLL_SLICE);
            }
        }
    }
}

/// Writes a line to stderr without ever panicking.
pub(crate) fn log(line: &str) {
    let _ = writeln!(io::stderr(), "{line}");
}
