//! Routing: dispatch a request by method and path, after recording chat
//! requests, checking `x-request-id` (with `--strict-request-id`) and the API key
//! on `/v1/*`.

use serde_json::{json, Value};

use crate::chat::chat_completions;
use crate::cli::{Config, DEFAULT_MAX_MODEL_LEN};
use crate::errors::unauthorized;
use crate::reply::Reply;
use crate::request::Request;
use crate::request_id;
use crate::response::Response;
use crate::state::State;

const CHAT_PATH: &str = "/v1/chat/completions";
/// The mock's own control endpoints, which no emulated server rule applies to.
const MOCK_PREFIX: &str = "/mock/";
/// `GET /mock/requests/{x-request-id}`: one recorded chat request.
const REQUESTS_PREFIX: &str = "/mock/requests/";

pub(crate) fn route(state: &State, request: &Request) -> Reply {
    if request.path == CHAT_PATH && request.method == "POST" {
        state.record_chat_request(request);
    }
    if !state.config.strict_request_id || request.path.starts_with(MOCK_PREFIX) {
        return dispatch(state, request);
    }
    // llama-cpp-python's middleware: refuse a bad id outright, else tag every answer
    // with the id (or a fresh one).
    let id = request.header("x-request-id").unwrap_or_default();
    if !request_id::accepted(id) {
        return Reply::Respond(Response::empty(400));
    }
    let id = if id.is_empty() { request_id::fresh() } else { id.to_owned() };
    dispatch(state, request).with_header("x-request-id", id)
}

fn dispatch(state: &State, request: &Request) -> Reply {
    let is_chat = request.path == CHAT_PATH;
    if request.path.starts_with("/v1/") && !authorized(&state.config, request) {
        return Reply::Respond(unauthorized());
    }
    let response = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => {
            state.stats.health_checked();
            Response::empty(200)
        }
        ("GET", "/v1/models") => Response::json(200, &model_list(&state.config)),
        ("POST", CHAT_PATH) => return chat_completions(state, request).unwrap_or_else(Reply::Respond),
        ("GET", "/mock/last-request") => Response::json(200, &state.last_request()),
        ("GET", path) if path.starts_with(REQUESTS_PREFIX) => {
            match state.request_by_id(&path[REQUESTS_PREFIX.len()..]) {
                Some(record) => Response::json(200, &record),
                None => Response::json(404, &json!({"detail": "Not Found"})),
            }
        }
        ("GET", "/mock/stats") => Response::json(200, &state.stats.snapshot()),
        ("POST", "/mock/reset-stats") => {
            state.stats.reset();
            Response::json(200, &state.stats.snapshot())
        }
        (_, "/health" | "/v1/models" | "/mock/last-request" | "/mock/stats" | "/mock/reset-stats") => {
            Response::json(405, &json!({"detail": "Method Not Allowed"}))
        }
        _ if is_chat => Response::json(405, &json!({"detail": "Method Not Allowed"})),
        _ => Response::json(404, &json!({"detail": "Not Found"})),
    };
    Reply::Respond(response)
}

fn authorized(config: &Config, request: &Request) -> bool {
    config
        .api_key
        .as_ref()
        .is_none_or(|key| request.header("authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key.as_str()))
}

fn model_list(config: &Config) -> Value {
    let max_model_len = config.max_model_len.unwrap_or(DEFAULT_MAX_MODEL_LEN);
    let data: Vec<Value> = config
        .models
        .iter()
        .map(|name| {
            json!({"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "vllm",
                   "root": name, "parent": null, "max_model_len": max_model_len})
        })
        .collect();
    json!({"object": "list", "data": data})
}
