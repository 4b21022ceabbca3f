//! The admission script in a real `redis-server`: exact under concurrency, all-or-nothing,
//! and the same GCRA numbers as the core's `limits` module.

use crate::support::{free_port, wait_until, Proc};
use edge_gateway::core::config::RedisTarget;
use edge_gateway::core::rate_limit::gcra::{Adjustment, Admission, Admitted, Decision, Lease, Rule, Settlement, Take};
use edge_gateway::core::redis::{
    admit_command, admitted, command, handshake, settle_command, settled, Reply, ReplyReader,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

struct Redis {
    _proc: Proc,
    addr: String,
}

fn redis() -> Redis {
    let port = free_port();
    let mut cmd = crate::support::launch::redis(port);
    cmd.stdout(Stdio::null());
    let proc = Proc::spawn(cmd);
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(&addr).is_ok()), "redis-server did not start");
    Redis { _proc: proc, addr }
}

/// One command on a fresh connection, its reply read with the core's [`ReplyReader`] (the loop
/// the Spin adapter runs, with blocking sockets).
fn call(addr: &str, command: &[u8]) -> Reply {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(command).unwrap();
    let mut replies = ReplyReader::default();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(reply) = replies.next_reply().unwrap() {
            return reply;
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "redis closed the connection");
        replies.feed(&chunk[..n]);
    }
}

fn admit_all(addr: &str, scope: &str, admission: &Admission) -> Admitted {
    admitted(call(addr, &admit_command(scope, admission)), admission).unwrap()
}

fn admit(addr: &str, scope: &str, takes: &[Take]) -> Vec<Decision> {
    admit_all(addr, scope, &Admission { takes: takes.to_vec(), lease: None }).decisions
}

fn settle(addr: &str, scope: &str, settlement: &Settlement) {
    settled(call(addr, &settle_command(scope, settlement))).unwrap();
}

fn lease(id: &str, max: u32) -> Option<Lease> {
    Some(Lease { bucket: "in_flight".into(), id: id.into(), max, ttl_ms: 60_000 })
}

fn requests(limit: u32) -> Take {
    Take { bucket: "requests".into(), rule: Rule::per_minute(limit), cost: 1 }
}

#[test]
fn admits_a_burst_of_exactly_the_limit_then_refuses_with_retry_after() {
    let r = redis();
    for expected in (0..5).rev() {
        let d = admit(&r.addr, "key:a", &[requests(5)])[0];
        assert!(d.allowed);
        assert_eq!(d.remaining, expected);
        assert_eq!(d.limit, 5);
    }
    let d = admit(&r.addr, "key:a", &[requests(5)])[0];
    assert!(!d.allowed);
    assert!((11_000..=12_000).contains(&d.retry_after_ms), "one unit per 12 s: {}", d.retry_after_ms);
    assert!((59_000..=60_000).contains(&d.reset_ms), "{}", d.reset_ms);
    assert!(admit(&r.addr, "key:b", &[requests(5)])[0].allowed, "scopes are independent");
}

#[test]
fn concurrent_admissions_never_exceed_the_limit() {
    let r = redis();
    let addr = r.addr.clone();
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || admit(&addr, "key:race", &[requests(50)])[0].allowed)
        })
        .collect();
    let admitted = threads.into_iter().map(|t| t.join().unwrap()).filter(|a| *a).count();
    println!("200 concurrent admissions against 50/min: {admitted} admitted");
    assert_eq!(admitted, 50);
}

#[test]
fn takes_from_every_bucket_or_from_none() {
    let r = redis();
    let tokens = |cost| Take { bucket: "tokens".into(), rule: Rule::per_minute(100), cost };
    let both = admit(&r.addr, "key:t", &[requests(10), tokens(90)]);
    assert!(both.iter().all(|d| d.allowed));
    let refused = admit(&r.addr, "key:t", &[requests(10), tokens(20)]);
    assert!(refused[0].allowed && !refused[1].allowed);
    assert_eq!(refused[0].remaining, 9, "the request bucket was not charged");
    let after = admit(&r.addr, "key:t", &[requests(10), tokens(5)]);
    assert!(after.iter().all(|d| d.allowed));
    assert_eq!(after[0].remaining, 8);
}

#[test]
fn a_cost_above_the_limit_is_never_admitted() {
    let r = redis();
    let d = admit(&r.addr, "key:x", &[Take { bucket: "tokens".into(), rule: Rule::per_minute(10), cost: 11 }])[0];
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, u64::MAX);
}

#[test]
fn leases_cap_in_flight_requests_until_released_and_refused_ones_take_nothing() {
    let r = redis();
    let with = |id: &str| Admission { takes: vec![requests(100)], lease: lease(id, 2) };
    assert!(admit_all(&r.addr, "key:l", &with("a")).allowed());
    assert!(admit_all(&r.addr, "key:l", &with("b")).allowed());
    let refused = admit_all(&r.addr, "key:l", &with("c"));
    assert!(!refused.allowed());
    assert_eq!(refused.decisions[0].remaining, 98, "no request budget spent on a refusal");
    settle(&r.addr, "key:l", &Settlement { release: Some(("in_flight".into(), "a".into())), adjustments: vec![] });
    let after = admit_all(&r.addr, "key:l", &with("c"));
    assert!(after.allowed(), "a released slot is free again");
    assert_eq!(after.lease.unwrap().remaining, 0);
}

#[test]
fn concurrent_leases_never_exceed_the_cap() {
    let r = redis();
    let addr = r.addr.clone();
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                admit_all(&addr, "key:cap", &Admission { takes: vec![], lease: lease(&format!("r{i}"), 7) }).allowed()
            })
        })
        .collect();
    let admitted = threads.into_iter().map(|t| t.join().unwrap()).filter(|a| *a).count();
    println!("100 concurrent leases against a cap of 7: {admitted} admitted");
    assert_eq!(admitted, 7);
}

#[test]
fn settling_refunds_unused_tokens_and_charges_overshoot() {
    let r = redis();
    let rule = Rule::per_minute(1_000);
    let tokens = |cost| Take { bucket: "tokens".into(), rule, cost };
    assert!(admit(&r.addr, "key:s", &[tokens(600)])[0].allowed);
    settle(
        &r.addr,
        "key:s",
        &Settlement { release: None, adjustments: vec![Adjustment { bucket: "tokens".into(), rule, delta: -500 }] },
    );
    let d = admit(&r.addr, "key:s", &[tokens(1)])[0];
    assert!((898..=899).contains(&d.remaining), "{}", d.remaining);
    settle(
        &r.addr,
        "key:s",
        &Settlement { release: None, adjustments: vec![Adjustment { bucket: "tokens".into(), rule, delta: 2_000 }] },
    );
    assert!(!admit(&r.addr, "key:s", &[tokens(1)])[0].allowed, "an overshoot refuses the next request");
}

/// Sends every command on one connection and returns the replies, in order.
fn session(addr: &str, commands: &[Vec<u8>]) -> Vec<Reply> {
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut replies = ReplyReader::default();
    let mut chunk = [0u8; 1024];
    let mut out = Vec::new();
    for command in commands {
        conn.write_all(command).unwrap();
        loop {
            if let Some(reply) = replies.next_reply().unwrap() {
                out.push(reply);
                break;
            }
            let n = conn.read(&mut chunk).unwrap();
            assert!(n > 0, "redis closed the connection");
            replies.feed(&chunk[..n]);
        }
    }
    out
}

#[test]
fn logs_in_as_an_acl_user_whose_password_was_percent_encoded() {
    let r = redis();
    let setup = command(&[b"ACL", b"SETUSER", b"gateway", b"on", b">p@ss:w/rd", b"~*", b"+@all"]);
    assert_eq!(call(&r.addr, &setup), Reply::Simple("OK".into()));
    let target = RedisTarget::parse(&format!("redis://gateway:p%40ss%3Aw%2Frd@{}/2", r.addr)).unwrap();
    let admission = Admission { takes: vec![requests(5)], lease: None };
    let mut commands = handshake(&target);
    commands.push(admit_command("key:acl", &admission));
    let replies = session(&r.addr, &commands);
    assert_eq!(replies[..2], [Reply::Simple("OK".into()), Reply::Simple("OK".into())], "AUTH, SELECT");
    assert!(admitted(replies[2].clone(), &admission).unwrap().allowed());

    let wrong = RedisTarget::parse(&format!("redis://gateway:nope@{}", r.addr)).unwrap();
    let replies = session(&r.addr, &handshake(&wrong));
    assert!(matches!(&replies[0], Reply::Error(e) if e.contains("WRONGPASS")), "{replies:?}");
}

#[test]
fn a_redis_cluster_accepts_every_script_because_its_keys_share_a_slot() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("edge-gateway-cluster-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = crate::support::launch::redis(port);
    cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .current_dir(&dir)
        .stdout(Stdio::null());
    let _proc = Proc::spawn(cmd);
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(&addr).is_ok()), "redis-server did not start");
    // A one-node cluster that owns every slot: it still refuses a script whose keys hash to
    // different slots (CROSSSLOT), exactly as a sharded one would.
    assert_eq!(call(&addr, &command(&[b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383"])), Reply::Simple("OK".into()));
    assert!(wait_until(Duration::from_secs(10), || {
        matches!(call(&addr, &command(&[b"CLUSTER", b"INFO"])), Reply::Bulk(Some(info)) if String::from_utf8_lossy(&info).contains("cluster_state:ok"))
    }));
    let untagged = command(&[b"EVAL", b"return 1", b"2", b"gw:key:a:requests", b"gw:key:a:tokens"]);
    assert!(matches!(call(&addr, &untagged), Reply::Error(e) if e.starts_with("CROSSSLOT")), "the check is live");

    let rule = Rule::per_minute(1_000);
    let admission = Admission {
        takes: vec![requests(10), Take { bucket: "tokens".into(), rule, cost: 100 }],
        lease: lease("r1", 2),
    };
    let admitted_now = admitted(call(&addr, &admit_command("key:cluster", &admission)), &admission).unwrap();
    assert!(admitted_now.allowed());
    let settlement = Settlement {
        release: Some(("in_flight".into(), "r1".into())),
        adjustments: vec![Adjustment { bucket: "tokens".into(), rule, delta: -50 }],
    };
    settle(&addr, "key:cluster", &settlement);
    let _ = std::fs::remove_dir_all(&dir);
}
