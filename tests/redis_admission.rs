//! The admission script in a real `redis-server`: exact under concurrency, all-or-nothing,
//! and the same GCRA numbers as the core's `limits` module.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use edge_gateway::core::limits::{Decision, Rule, Take};
use edge_gateway::core::redis::{admit_command, decisions, parse_reply};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{free_port, wait_until, Proc};

struct Redis {
    _proc: Proc,
    addr: String,
}

fn redis() -> Redis {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null());
    let proc = Proc::spawn(cmd);
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(&addr).is_ok()), "redis-server did not start");
    Redis { _proc: proc, addr }
}

fn admit(addr: &str, scope: &str, takes: &[Take]) -> Vec<Decision> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(&admit_command(scope, takes)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((reply, _)) = parse_reply(&buf).unwrap() {
            return decisions(reply, takes).unwrap();
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
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
