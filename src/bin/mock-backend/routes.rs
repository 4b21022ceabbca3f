//! Routing: dispatch a request by method and path, after recording generation
//! requests, checking `x-request-id` (with `--strict-request-id`) and the API key
//! on `/v1/*`.

use serde_json::json;

use crate::chat::chat_completions;
use crate::completions::completions;
use crate::embeddings::embeddings;
use crate::errors::unauthorized;
use crate::intake::model_not_found;
use crate::models::{model_card, model_list};
use crate::reply::Reply;
use crate::request::Request;
use crate::request_id;
use crate::response::Response;
use crate::responses::{create_response, delete_response, retrieve_response};
use crate::state::State;

const CHAT_PATH: &str = "/v1/chat/completions";
const COMPLETIONS_PATH: &str = "/v1/completions";
const EMBEDDINGS_PATH: &str = "/v1/embeddings";
const RESPONSES_PATH: &str = "/v1/responses";
/// The generation endpoints: every `POST` to one is counted and recorded.
const GENERATION_PATHS: [&str; 4] = [CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH, RESPONSES_PATH];
/// Paths served for one method only; any other method gets a 405.
const FIXED_PATHS: [&str; 9] = [
    "/health",
    "/v1/models",
    "/mock/last-request",
    "/mock/stats",
    "/mock/reset-stats",
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBEDDINGS_PATH,
    RESPONSES_PATH,
];
/// `GET` and `DELETE /v1/responses/{id}`: a stored response.
const RESPONSE_PREFIX: &str = "/v1/responses/";
/// `GET /v1/models/{model}`: one served model.
const MODELS_PREFIX: &str = "/v1/models/";
/// The mock's own control endpoints, which no emulated server rule applies to.
const MOCK_PREFIX: &str = "/mock/";
/// `GET /mock/requests/{x-request-id}`: one recorded request.
const REQUESTS_PREFIX: &str = "/mock/requests/";

pub(crate) fn route(state: &State, request: &Request) -> Reply {
    if request.method == "POST" && GENERATION_PATHS.contains(&request.path.as_str()) {
        state.record_request(request);
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
    if request.path.starts_with("/v1/") && !authorized(state, request) {
        return Reply::Respond(unauthorized());
    }
    let response = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => {
            state.stats.health_checked();
            Response::empty(200)
        }
        ("GET", "/v1/models") => Response::json(200, &model_list(&state.config)),
        ("GET", path) if model_name(path).is_some() => {
            let name = model_name(path).unwrap_or_default();
            if state.config.models.iter().any(|served| served == name) {
                Response::json(200, &model_card(&state.config, name))
            } else {
                model_not_found(name)
            }
        }
        ("POST", CHAT_PATH) => return chat_completions(state, request).unwrap_or_else(Reply::Respond),
        ("POST", COMPLETIONS_PATH) => return completions(state, request).unwrap_or_else(Reply::Respond),
        ("POST", EMBEDDINGS_PATH) => return embeddings(state, request).unwrap_or_else(Reply::Respond),
        ("POST", RESPONSES_PATH) => return create_response(state, request).unwrap_or_else(Reply::Respond),
        ("GET", path) if response_id(path).is_some() => retrieve_response(state, response_id(path).unwrap_or_default()),
        ("DELETE", path) if response_id(path).is_some() => {
            delete_response(state, response_id(path).unwrap_or_default())
        }
        ("GET", "/mock/last-request") => Response::json(200, &state.last_request()),
        ("GET", path) if path.starts_with(REQUESTS_PREFIX) => {
            match state.request_by_id(&path[REQUESTS_PREFIX.len()..]) {
                Some(record) => Response::json(200, &record),
                None => not_found(),
            }
        }
        ("GET", "/mock/stats") => Response::json(200, &state.stats.snapshot()),
        ("POST", "/mock/reset-stats") => {
            state.stats.reset();
            Response::json(200, &state.stats.snapshot())
        }
        (_, path) if FIXED_PATHS.contains(&path) || model_name(path).is_some() || response_id(path).is_some() => {
            Response::json(405, &json!({"detail": "Method Not Allowed"}))
        }
        _ => not_found(),
    };
    Reply::Respond(response)
}

/// The `{model}` of `/v1/models/{model}` (everything after the prefix, slashes included).
fn model_name(path: &str) -> Option<&str> {
    path.strip_prefix(MODELS_PREFIX).filter(|name| !name.is_empty())
}

/// The `{id}` of `/v1/responses/{id}` (one path segment).
fn response_id(path: &str) -> Option<&str> {
    path.strip_prefix(RESPONSE_PREFIX).filter(|id| !id.is_empty() && !id.contains('/'))
}

/// FastAPI's answer for a path no route serves.
fn not_found() -> Response {
    Response::json(404, &json!({"detail": "Not Found"}))
}

fn authorized(state: &State, request: &Request) -> bool {
    state
        .config
        .api_key
        .as_ref()
        .is_none_or(|key| request.header("authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key.as_str()))
}
