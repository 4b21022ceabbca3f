//! The Responses API's store: responses created with `store` (OpenAI's default), kept in
//! memory for `GET` and `DELETE /v1/responses/{id}` and for `previous_response_id`, as
//! vLLM keeps them with `VLLM_ENABLE_RESPONSES_API_STORE=1`.
//!
//! A response is stored when it is created, with the moment its generation ends: until
//! then a foreground response cannot be found (vLLM stores it when it is complete) and a
//! `background` one shows its `queued` snapshot.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;

/// How many responses are kept; the oldest go first.
const CAPACITY: usize = 4096;

pub(crate) struct Stored {
    /// The Response object once its generation is over.
    pub(crate) done: Value,
    /// What a `background` response shows before then.
    pub(crate) pending: Option<Value>,
    pub(crate) ready_at: Instant,
}

impl Stored {
    fn visible(&self, now: Instant) -> Option<&Value> {
        if now >= self.ready_at {
            Some(&self.done)
        } else {
            self.pending.as_ref()
        }
    }
}

#[derive(Default)]
pub(crate) struct ResponseStore {
    entries: Mutex<VecDeque<(String, Stored)>>,
}

impl ResponseStore {
    pub(crate) fn insert(&self, id: String, stored: Stored) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back((id, stored));
    }

    /// The response as it stands now, if it can be found.
    pub(crate) fn get(&self, id: &str) -> Option<Value> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        entries.iter().find(|(stored_id, _)| stored_id == id).and_then(|(_, stored)| stored.visible(now).cloned())
    }

    /// Removes a response that can be found; whether there was one.
    pub(crate) fn delete(&self, id: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let found = entries.iter().position(|(stored_id, stored)| stored_id == id && stored.visible(now).is_some());
        found.is_some_and(|index| entries.remove(index).is_some())
    }
}
