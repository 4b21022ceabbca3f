//! The Redis limit store's wire format: commands, replies, URLs, and reading decisions.

use edge_gateway::core::config::RedisTarget;
use edge_gateway::core::config::{Config, Lookup};
use edge_gateway::core::rate_limit::gcra::{Adjustment, Admission, Lease, Rule, Settlement, Take};
use edge_gateway::core::redis::{
    admit_command, admitted, command, handshake, login_refusal, parse_reply, refused_for_now, settle_command, Reply,
    ReplyReader,
};

#[test]
fn encodes_commands_as_resp_arrays_of_bulk_strings() {
    assert_eq!(command(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    assert_eq!(command(&[b"SET", b"", b"a\r\nb"]), b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$4\r\na\r\nb\r\n");
}

#[test]
fn admission_is_one_eval_with_a_key_per_bucket() {
    let takes = [
        Take { bucket: "requests".into(), rule: Rule::per_minute(10), cost: 1 },
        Take { bucket: "tokens".into(), rule: Rule { limit: 1000, period_ms: 60_000 }, cost: 250 },
    ];
    let admission = Admission { takes: takes.to_vec(), lease: None };
    let encoded = String::from_utf8(admit_command("key:alpha", &admission)).unwrap();
    assert!(encoded.starts_with("*12\r\n$4\r\nEVAL\r\n"));
    for part in
        ["$1\r\n2\r\n$23\r\ngw:{key:alpha}:requests", "gw:{key:alpha}:tokens", "$4\r\n1000\r\n", "$3\r\n250\r\n"]
    {
        assert!(encoded.contains(part), "{part:?} missing");
    }
}

#[test]
fn parses_every_reply_type_and_waits_for_more_bytes() {
    let cases: Vec<(&[u8], Reply)> = vec![
        (b"+OK\r\n", Reply::Simple("OK".into())),
        (b"-ERR wrong\r\n", Reply::Error("ERR wrong".into())),
        (b":-42\r\n", Reply::Integer(-42)),
        (b"$5\r\nhe\r\no\r\n", Reply::Bulk(Some(b"he\r\no".to_vec()))),
        (b"$-1\r\n", Reply::Bulk(None)),
        (
            b"*2\r\n:1\r\n*1\r\n+x\r\n",
            Reply::Array(Some(vec![Reply::Integer(1), Reply::Array(Some(vec![Reply::Simple("x".into())]))])),
        ),
        (b"*-1\r\n", Reply::Array(None)),
    ];
    for (bytes, expected) in cases {
        for cut in 0..bytes.len() {
            assert_eq!(parse_reply(&bytes[..cut]).unwrap(), None, "{:?} cut at {cut}", String::from_utf8_lossy(bytes));
        }
        let mut with_tail = bytes.to_vec();
        with_tail.extend_from_slice(b"+next\r\n");
        assert_eq!(parse_reply(&with_tail).unwrap(), Some((expected, bytes.len())));
    }
    assert!(parse_reply(b"?what\r\n").is_err());
    // Found by fuzzing: an element that starts with an empty line used to panic.
    assert!(parse_reply(b"*10\r\n\r\n:2\r\n").is_err());
    assert!(parse_reply(b"$9223372036854775807\r\nx").is_err(), "a length past memory is malformed");
    assert!(parse_reply(b":notanumber\r\n").is_err());
}

#[test]
fn reads_five_integers_per_bucket_as_decisions() {
    let takes =
        Admission { takes: vec![Take { bucket: "requests".into(), rule: Rule::per_minute(3), cost: 1 }], lease: None };
    let reply = Reply::Array(Some([0, 3, 0, 60_000, 20_000].map(Reply::Integer).to_vec()));
    let d = admitted(reply, &takes).unwrap().decisions[0];
    assert!(!d.allowed);
    assert_eq!((d.limit, d.remaining, d.reset_ms, d.retry_after_ms), (3, 0, 60_000, 20_000));
    let never = Reply::Array(Some([0, 3, 0, 0, -1].map(Reply::Integer).to_vec()));
    assert_eq!(admitted(never, &takes).unwrap().decisions[0].retry_after_ms, u64::MAX);
    assert!(admitted(Reply::Error("NOSCRIPT".into()), &takes).is_err());
    assert!(admitted(Reply::Array(Some(vec![Reply::Integer(1)])), &takes).is_err());
    let with_lease =
        Admission { lease: Some(Lease { bucket: "in_flight".into(), id: "r".into(), max: 2, ttl_ms: 1 }), ..takes };
    let reply = Reply::Array(Some([1, 3, 2, 20_000, 0, 1, 2, 1, 0, 0].map(Reply::Integer).to_vec()));
    let a = admitted(reply, &with_lease).unwrap();
    assert_eq!(a.decisions.len(), 1);
    assert_eq!(a.lease.unwrap().remaining, 1);
}

#[test]
fn parses_redis_urls_and_never_prints_the_password() {
    let t = RedisTarget::parse("redis://:s3cret@10.0.0.5:6380/2").unwrap();
    assert_eq!((t.host.as_str(), t.port, t.password.as_deref(), t.db), ("10.0.0.5", 6380, Some("s3cret"), 2));
    assert_eq!(t.username, None);
    assert!(!format!("{t:?}").contains("s3cret"));
    let t = RedisTarget::parse("redis://cache.internal").unwrap();
    assert_eq!((t.port, t.password.clone(), t.db), (6379, None, 0));
    assert_eq!(t.timeout_ms, 250, "the default bound on one Redis call");
    assert_eq!(handshake(&t), Vec::<Vec<u8>>::new());
    let t = RedisTarget::parse("redis://:pw@h:1/3").unwrap();
    assert_eq!(handshake(&t), [command(&[b"AUTH", b"pw"]), command(&[b"SELECT", b"3"])], "AUTH, then SELECT");
}

#[test]
fn logs_in_as_an_acl_user_with_percent_decoded_credentials() {
    let t = RedisTarget::parse("redis://gateway:p%40ss%3Aw%2Frd%25@10.0.0.5").unwrap();
    assert_eq!((t.username.as_deref(), t.password.as_deref()), (Some("gateway"), Some("p@ss:w/rd%")));
    assert_eq!(handshake(&t), [command(&[b"AUTH", b"gateway", b"p@ss:w/rd%"])], "AUTH user password (Redis 6 ACL)");
    let debug = format!("{t:?}");
    assert!(debug.contains("gateway:***@") && !debug.contains("p@ss"), "{debug}");
    let t = RedisTarget::parse("redis://a%20user:%F0%9F%94%91@h").unwrap();
    assert_eq!((t.username.as_deref(), t.password.as_deref()), (Some("a user"), Some("🔑")));
}

#[test]
fn a_password_holding_an_unescaped_slash_or_at_is_read_whole_and_never_echoed() {
    // The password once ended at its `/`, and the rest was quoted as a database that is not a
    // number — to every caller, in the configuration error.
    let t = RedisTarget::parse("redis://:first-half/SECRET-half@cache.internal:6379/2").unwrap();
    assert_eq!((t.host.as_str(), t.port, t.db), ("cache.internal", 6379, 2));
    assert_eq!(t.password.as_deref(), Some("first-half/SECRET-half"));
    let t = RedisTarget::parse("redis://user:p@ss/w@cache.internal").unwrap();
    assert_eq!(
        (t.username.as_deref(), t.password.as_deref(), t.host.as_str()),
        (Some("user"), Some("p@ss/w"), "cache.internal")
    );
    // Without its `@` (a host forgotten, an `@` escaped by a tool) the password stands where the
    // port or the database should: the error quotes neither.
    for url in [
        "redis://:a/SECRET@h/x",
        "redis://:a/SECRET@h:nope",
        "redis://:a/SECRET@",
        "redis://default:SECRET",
        "redis://:SECRET",
        "redis://:SECRET%40cache.internal",
        "redis://:pass/SECRET",
        "redis://[SECRET]:1",
        // Not a host: what follows would be looked up and logged as one.
        "redis://cache.internal?password=SECRET",
        "redis://cache.internal?SECRET",
        "redis://cache.internal#SECRET",
        "redis://cache.internal SECRET",
    ] {
        let error = RedisTarget::parse(url).expect_err(url);
        assert!(!error.contains("SECRET"), "{url}: {error}");
    }
}

#[test]
fn only_a_refusal_that_ran_nothing_and_asks_again_later_is_for_now() {
    for code in [
        "BUSY Redis is busy running a script.",
        "LOADING Redis is loading the dataset in memory",
        "READONLY You can't write against a read only replica.",
        "MASTERDOWN Link with MASTER is down",
        "TRYAGAIN Multiple keys request during rehashing of slot",
    ] {
        assert!(refused_for_now(&Reply::Error(code.into())), "{code}");
    }
    for other in [
        "ERR Error running script",
        "NOSCRIPT No matching script",
        "BUSYKEY Target key name already exists.",
        "OOM command not allowed",
    ] {
        assert!(!refused_for_now(&Reply::Error(other.into())), "{other}");
    }
    assert!(!refused_for_now(&Reply::Integer(1)));
}

#[test]
fn a_refused_login_is_logged_without_what_redis_quoted() {
    let renamed = "ERR unknown command 'AUTH', with args beginning with: 'MyS3cretPassw' ";
    assert_eq!(login_refusal(renamed), "ERR unknown command");
    let wrong = "WRONGPASS invalid username-password pair or user is disabled.";
    assert_eq!(login_refusal(wrong), wrong);
    assert_eq!(login_refusal("'MyS3cretPassw'"), "(no reason given)");
}

#[test]
fn accepts_bracketed_ipv6_literals() {
    let t = RedisTarget::parse("redis://[::1]:6380/1").unwrap();
    assert_eq!((t.host.as_str(), t.port, t.db), ("::1", 6380, 1));
    assert_eq!(format!("{t:?}"), "redis://[::1]:6380/1");
    let t = RedisTarget::parse("redis://:pw@[fd00::5]").unwrap();
    assert_eq!((t.host.as_str(), t.port, t.password.as_deref()), ("fd00::5", 6379, Some("pw")));
}

#[test]
fn refuses_malformed_urls_and_tls_with_a_reason() {
    let cases = [
        ("http://h:1", "redis://"),
        ("redis://", "no host"),
        ("redis://h:notaport", "not a port"),
        ("redis://h:0", "not a port"),
        ("redis://h:70000", "not a port"),
        ("redis://h/x", "not a number"),
        ("redis://::1:6379", "brackets"),
        ("redis://[::1", "redis://"),
        ("redis://[not-ip]:1", "not an IPv6 address"),
        ("redis://user@h", "no password"),
        ("redis://user:@h", "no password"),
        ("redis://:p%zz@h", "%-escape"),
        ("redis://:p%4@h", "%-escape"),
        ("rediss://:pw@cache.example.com:6380", "TLS"),
    ];
    for (url, reason) in cases {
        let error = RedisTarget::parse(url).expect_err(url);
        assert!(error.contains(reason), "{url}: {error}");
        assert!(!error.contains("pw"), "{url}: the error repeats no credential: {error}");
    }
}

fn config_with(vars: &[(&str, &str)]) -> Result<Config, String> {
    let mut all = crate::support::vars();
    for (name, value) in vars {
        all.insert(name.to_string(), value.to_string());
    }
    Config::from_lookup(&all as &dyn Lookup).map_err(|e| e.0)
}

#[test]
fn the_redis_timeout_is_configured_and_validated_on_every_build() {
    let url = ("GATEWAY_REDIS_URL", "redis://127.0.0.1:6379");
    assert_eq!(config_with(&[url]).unwrap().redis.unwrap().timeout_ms, 250);
    let t = config_with(&[url, ("GATEWAY_REDIS_TIMEOUT_MS", "80")]).unwrap().redis.unwrap();
    assert_eq!(t.timeout_ms, 80);
    for bad in ["0", "abc", "60001"] {
        // Checked even without a Redis URL: the Workers build validates it the same way.
        let error = config_with(&[("GATEWAY_REDIS_TIMEOUT_MS", bad)]).unwrap_err();
        assert!(error.starts_with("GATEWAY_REDIS_TIMEOUT_MS must be an integer"), "{error}");
    }
    let error = config_with(&[("GATEWAY_REDIS_URL", "rediss://:pw@cache:6380")]).unwrap_err();
    assert!(error.starts_with("GATEWAY_REDIS_URL uses rediss:// (TLS)"), "{error}");
}

/// The key Redis Cluster hashes: the part between the first `{` and the next `}`, when not empty.
fn hash_slot_key(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The keys of an `EVAL` command (`EVAL script numkeys key…`).
fn eval_keys(encoded: &[u8]) -> Vec<String> {
    let mut reader = ReplyReader::default();
    // A command is an array of bulk strings: the reply parser reads it just as well.
    reader.feed(encoded);
    let Some(Reply::Array(Some(parts))) = reader.next_reply().unwrap() else { panic!("not an array") };
    let text: Vec<String> = parts
        .into_iter()
        .map(|p| match p {
            Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    let count: usize = text[2].parse().unwrap();
    text[3..3 + count].to_vec()
}

#[test]
fn every_key_of_a_script_shares_one_cluster_hash_tag() {
    let rule = Rule::per_minute(10);
    let admission = Admission {
        takes: vec![Take { bucket: "requests".into(), rule, cost: 1 }, Take { bucket: "tokens".into(), rule, cost: 5 }],
        lease: Some(Lease { bucket: "in_flight".into(), id: "req_1".into(), max: 2, ttl_ms: 1000 }),
    };
    let settlement = Settlement {
        release: Some(("in_flight".into(), "req_1".into())),
        adjustments: vec![Adjustment { bucket: "tokens".into(), rule, delta: -3 }],
    };
    for scope in ["key:alpha", "ip:2001:db8::1", "jwt:user{odd}name"] {
        for keys in [eval_keys(&admit_command(scope, &admission)), eval_keys(&settle_command(scope, &settlement))] {
            assert!(keys.len() >= 2, "{keys:?}");
            let tags: Vec<&str> = keys.iter().map(|k| hash_slot_key(k)).collect();
            assert!(tags.iter().all(|t| *t == tags[0]), "{scope}: {keys:?} hash to different slots");
            assert!(tags[0].starts_with(scope.split(['{', '}']).next().unwrap()), "{scope}: tag {:?}", tags[0]);
        }
    }
}

#[test]
fn the_reply_reader_assembles_replies_from_any_chunks() {
    let bytes = b"*2\r\n:1\r\n$3\r\nabc\r\n+OK\r\n";
    for size in 1..bytes.len() {
        let mut reader = ReplyReader::default();
        let mut replies = Vec::new();
        for chunk in bytes.chunks(size) {
            reader.feed(chunk);
            while let Some(reply) = reader.next_reply().unwrap() {
                replies.push(reply);
            }
        }
        let first = Reply::Array(Some(vec![Reply::Integer(1), Reply::Bulk(Some(b"abc".to_vec()))]));
        assert_eq!(replies, [first, Reply::Simple("OK".into())], "chunks of {size}");
    }
    let mut garbage = ReplyReader::default();
    garbage.feed(b"?what\r\n");
    assert!(garbage.next_reply().is_err());
    let mut flood = ReplyReader::default();
    flood.feed(b"$600000000\r\n");
    assert!(flood.next_reply().is_err(), "a bulk string past Redis's own limit");
    let mut endless = ReplyReader::default();
    endless.feed(&vec![b'+'; 2 << 20]);
    assert!(endless.next_reply().is_err(), "two megabytes without a reply's end");
}

#[test]
fn reads_the_shared_health_book_and_skips_malformed_entries() {
    use edge_gateway::core::redis::health_entries;
    let bulk = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
    let reply =
        Reply::Array(Some(vec![bulk("a"), bulk("2:0"), bulk("b"), bulk("0:1700000030000"), bulk("c"), bulk("junk")]));
    assert_eq!(health_entries(reply), [("a".to_string(), 2, 0), ("b".to_string(), 0, 1_700_000_030_000)]);
    assert!(health_entries(Reply::Error("NOAUTH".into())).is_empty(), "health is advice: an error reads as healthy");
}
