//! Redis as the limit store, without I/O: the RESP2 bytes of one atomic admission and the
//! parsing of Redis's reply ([`ReplyReader`]). An adapter only carries the bytes over a TCP
//! connection, within [`RedisTarget::timeout_ms`].
//!
//! Admission is one `EVAL` of `admit.lua`, which runs the same GCRA as [`crate::core::rate_limit::gcra`] inside
//! Redis: a script runs without any other command interleaved, so concurrent gateways can never
//! read the same bucket and together pass the limit, and Redis's clock is the only clock.

use crate::core::config::RedisTarget;
use crate::core::rate_limit::gcra::{Admission, Admitted, Decision, Settlement};
use crate::core::rate_limit::store::StoreError;

/// The admission script (see the file for its arguments and reply).
pub const ADMIT_SCRIPT: &str = include_str!("admit.lua");
/// The settlement script: release a lease, correct token buckets.
pub const SETTLE_SCRIPT: &str = include_str!("settle.lua");
/// The passive-health script: replay a request's health events.
pub const HEALTH_SCRIPT: &str = include_str!("health.lua");
/// The hash holding the shared passive-health book.
const HEALTH_KEY: &str = "gw:health";

/// Reads the shared passive-health book.
pub fn health_load_command() -> Vec<u8> {
    command(&[b"HGETALL", HEALTH_KEY.as_bytes()])
}

/// The book's entries: `(backend, consecutive failures, ejected until ms)`; malformed ones are
/// skipped (health is advice, never a reason to fail a request).
pub fn health_entries(reply: Reply) -> Vec<(String, u32, u64)> {
    let Reply::Array(Some(items)) = reply else { return Vec::new() };
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => String::from_utf8(b.clone()).ok(),
        _ => None,
    };
    items
        .chunks_exact(2)
        .filter_map(|pair| {
            let name = text(&pair[0])?;
            let value = text(&pair[1])?;
            let (failures, until) = value.split_once(':')?;
            Some((name, failures.parse().ok()?, until.parse().ok()?))
        })
        .collect()
}

/// The `EVAL` that replays `events` into the shared book.
pub fn health_record_command(
    events: &[crate::core::upstream::balance::HealthEvent],
    breaker: crate::core::config::Breaker,
) -> Vec<u8> {
    use crate::core::upstream::balance::HealthEvent;
    let mut args = vec![breaker.eject_after.to_string(), breaker.eject_for_ms.to_string()];
    for event in events {
        let (kind, backend, ms) = match event {
            HealthEvent::Recovered { backend } => ("r", backend, 0),
            HealthEvent::Failed { backend, at_ms } => ("f", backend, *at_ms),
        };
        args.extend([kind.to_string(), backend.clone(), ms.to_string()]);
    }
    eval(HEALTH_SCRIPT, &[HEALTH_KEY.to_string()], &args)
}

/// The last `/readyz` probe round (JSON), shared by every instance.
const PROBE_ROUND_KEY: &str = "gw:readyz:round";
/// Held by the instance taking the next probe round.
const PROBE_CLAIM_KEY: &str = "gw:readyz:claim";
/// How long a stored round is kept (it is used only while fresh, but a stale one beats none while
/// another instance refreshes it).
const PROBE_ROUND_TTL_MS: u64 = 3_600_000;

/// Reads the last probe round.
pub fn probe_round_command() -> Vec<u8> {
    command(&[b"GET", PROBE_ROUND_KEY.as_bytes()])
}

/// The stored round, if there is a readable one.
pub fn probe_round(reply: Reply) -> Option<crate::core::upstream::readiness::ProbeRound> {
    match reply {
        Reply::Bulk(Some(json)) => serde_json::from_slice(&json).ok(),
        _ => None,
    }
}

/// Claims the next probe round for `hold_ms` (`SET … NX PX`): only one instance probes.
pub fn probe_claim_command(hold_ms: u64) -> Vec<u8> {
    command(&[b"SET", PROBE_CLAIM_KEY.as_bytes(), b"1", b"NX", b"PX", hold_ms.max(1).to_string().as_bytes()])
}

/// Whether the claim was won.
pub fn probe_claimed(reply: &Reply) -> bool {
    matches!(reply, Reply::Simple(ok) if ok == "OK")
}

/// Stores a probe round for every instance (and lets go of the claim).
pub fn probe_store_commands(round: &crate::core::upstream::readiness::ProbeRound) -> [Vec<u8>; 2] {
    let json = serde_json::to_vec(round).unwrap_or_default();
    [
        command(&[b"SET", PROBE_ROUND_KEY.as_bytes(), &json, b"PX", PROBE_ROUND_TTL_MS.to_string().as_bytes()]),
        command(&[b"DEL", PROBE_CLAIM_KEY.as_bytes()]),
    ]
}

/// Encodes one command as a RESP2 array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The commands to send on a fresh connection before admitting (`AUTH`, `SELECT`), each
/// answered by one reply.
pub fn handshake(target: &RedisTarget) -> Vec<Vec<u8>> {
    let mut commands = Vec::new();
    match (&target.username, &target.password) {
        (Some(user), Some(password)) => commands.push(command(&[b"AUTH", user.as_bytes(), password.as_bytes()])),
        (None, Some(password)) => commands.push(command(&[b"AUTH", password.as_bytes()])),
        _ => {}
    }
    if target.db != 0 {
        commands.push(command(&[b"SELECT", target.db.to_string().as_bytes()]));
    }
    commands
}

/// What of Redis's refusal of a login may be logged: its words up to the first quote. Some errors
/// quote the command's arguments — with `AUTH` renamed, Redis answers `ERR unknown command 'AUTH',
/// with args beginning with: '<the password>'`, as may a proxy — and no log may hold the password.
pub fn login_refusal(error: &str) -> String {
    let words = error.split(['\'', '"', '`']).next().unwrap_or_default().trim_end_matches([' ', ',', ':']);
    if words.is_empty() {
        "(no reason given)".into()
    } else {
        words.into()
    }
}

/// A scope's key for `bucket`. The scope is a hash tag (`{…}`), so every key one script touches
/// lives in the same Redis Cluster slot and a cluster (or a cluster proxy) accepts the script.
/// Scopes start with their kind (`key:`, `ip:`, `jwt:`), so the tag is never empty; a `}` inside a
/// scope ends the tag early, but at the same place in every key of that scope.
fn key(scope: &str, bucket: &str) -> String {
    format!("gw:{{{scope}}}:{bucket}")
}

/// The `EVAL` that admits a request for `scope` (keys `gw:{scope}:{bucket}`).
pub fn admit_command(scope: &str, admission: &Admission) -> Vec<u8> {
    let mut keys: Vec<String> = admission.takes.iter().map(|t| key(scope, &t.bucket)).collect();
    let mut numbers: Vec<String> = vec![admission.takes.len().to_string()];
    numbers.extend(
        admission
            .takes
            .iter()
            .flat_map(|t| [t.rule.limit.to_string(), t.rule.period_ms.to_string(), t.cost.to_string()]),
    );
    if let Some(lease) = &admission.lease {
        keys.push(key(scope, &lease.bucket));
        numbers.extend([lease.id.clone(), lease.max.to_string(), lease.ttl_ms.to_string()]);
    }
    eval(ADMIT_SCRIPT, &keys, &numbers)
}

/// The `EVAL` that settles a request for `scope`.
pub fn settle_command(scope: &str, settlement: &Settlement) -> Vec<u8> {
    let (lease_bucket, lease_id) = match &settlement.release {
        Some((bucket, id)) => (bucket.as_str(), id.as_str()),
        None => ("in_flight", ""),
    };
    let mut keys = vec![key(scope, lease_bucket)];
    let mut args = vec![lease_id.to_string()];
    for a in &settlement.adjustments {
        keys.push(key(scope, &a.bucket));
        args.extend([a.rule.limit.to_string(), a.rule.period_ms.to_string(), a.delta.to_string()]);
    }
    eval(SETTLE_SCRIPT, &keys, &args)
}

fn eval(script: &str, keys: &[String], args: &[String]) -> Vec<u8> {
    let count = keys.len().to_string();
    let mut parts: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), count.as_bytes()];
    parts.extend(keys.iter().map(|k| k.as_bytes()));
    parts.extend(args.iter().map(|a| a.as_bytes()));
    command(&parts)
}

/// Redis's own limit on one bulk string (`proto-max-bulk-len`).
const MAX_BULK_BYTES: i64 = 512 << 20;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the reply
/// and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, StoreError> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let bad = || StoreError("malformed reply from Redis".into());
    let line = buf.get(1..line_end).ok_or_else(bad)?; // an empty line has no type byte
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    let after = line_end + 2;
    match buf.first() {
        Some(b'+') => Ok(Some((Reply::Simple(line.to_string()), after))),
        Some(b'-') => Ok(Some((Reply::Error(line.to_string()), after))),
        Some(b':') => Ok(Some((Reply::Integer(line.parse().map_err(|_| bad())?), after))),
        Some(b'$') => {
            let len: i64 = line.parse().map_err(|_| bad())?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            if len > MAX_BULK_BYTES {
                return Err(bad()); // Redis itself never sends more
            }
            let end = usize::try_from(len).ok().and_then(|len| after.checked_add(len)).ok_or_else(bad)?;
            if buf.len() < end.saturating_add(2) {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        Some(b'*') => {
            let count: i64 = line.parse().map_err(|_| bad())?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::with_capacity(count.min(1024) as usize);
            let mut at = after;
            for _ in 0..count {
                match parse_reply(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(bad()),
    }
}

/// The most bytes buffered while waiting for one reply. The gateway's replies are a few hundred
/// bytes (the health book a few KB); anything near this is a misbehaving peer, not Redis.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Turns the bytes read from a Redis connection into replies, whatever the chunks they arrive in
/// (sans-IO: the adapter reads, this only parses).
#[derive(Debug, Default)]
pub struct ReplyReader {
    /// Bytes read but not yet part of a whole reply.
    pending: Vec<u8>,
}

impl ReplyReader {
    /// Adds bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole reply, if the bytes fed so far hold one (`Ok(None)`: read more).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, StoreError> {
        match parse_reply(&self.pending)? {
            Some((reply, used)) => {
                self.pending.drain(..used);
                Ok(Some(reply))
            }
            None if self.pending.len() > MAX_PENDING_BYTES => Err(StoreError("reply from Redis too large".into())),
            None => Ok(None),
        }
    }

    /// Whether bytes are held that no reply has claimed yet.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Reads the admission script's reply: five integers per take, then five for the lease.
pub fn admitted(reply: Reply, admission: &Admission) -> Result<Admitted, StoreError> {
    let expected = (admission.takes.len() + usize::from(admission.lease.is_some())) * 5;
    let items = match reply {
        Reply::Array(Some(items)) if items.len() == expected => items,
        Reply::Error(e) => return Err(StoreError(format!("Redis refused the admission: {e}"))),
        other => return Err(StoreError(format!("unexpected admission reply: {other:?}"))),
    };
    let numbers: Vec<i64> = items
        .into_iter()
        .map(|r| match r {
            Reply::Integer(n) => Ok(n),
            other => Err(StoreError(format!("unexpected admission value: {other:?}"))),
        })
        .collect::<Result<_, _>>()?;
    let mut decisions: Vec<Decision> = numbers
        .chunks_exact(5)
        .map(|n| Decision {
            allowed: n[0] == 1,
            limit: n[1].clamp(0, i64::from(u32::MAX)) as u32,
            remaining: n[2].clamp(0, i64::from(u32::MAX)) as u32,
            reset_ms: n[3].max(0) as u64,
            retry_after_ms: if n[4] < 0 { u64::MAX } else { n[4] as u64 },
        })
        .collect();
    let lease = admission.lease.is_some().then(|| decisions.pop()).flatten();
    Ok(Admitted { decisions, lease })
}

/// Checks the settlement script's reply.
/// Whether Redis refused a command for now and asks for it again later, having run nothing: a
/// script running too long (`BUSY`), a dataset still loading after a restart (`LOADING`), a
/// replica reached during a failover (`READONLY`, `MASTERDOWN`), a cluster resharding (`TRYAGAIN`).
pub fn refused_for_now(reply: &Reply) -> bool {
    const FOR_NOW: [&str; 5] = ["BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN"];
    matches!(reply, Reply::Error(e) if FOR_NOW.iter().any(|code| e.split(' ').next() == Some(code)))
}

pub fn settled(reply: Reply) -> Result<(), StoreError> {
    match reply {
        Reply::Integer(1) => Ok(()),
        Reply::Error(e) => Err(StoreError(format!("Redis refused the settlement: {e}"))),
        other => Err(StoreError(format!("unexpected settlement reply: {other:?}"))),
    }
}
