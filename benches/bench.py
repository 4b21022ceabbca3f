#!/usr/bin/env python3
"""`make bench`: what the edge costs, measured side by side on 127.0.0.1 with one load tool.

Targets (each in front of the same native mock backend):
  direct      the mock itself (the physical limit)
  worker      our Workers bundle, served by workerd from a workerd config (no wrangler proxy)
  bare-js     a hand-written JavaScript pass-through worker on the same workerd
  spin        our Spin component under `wasmtime serve`
  worker-committed, spin-committed   (only with --only) the same with GATEWAY_STREAM_COMMIT_MS=0:
              every stream takes a long prefill's path (committed, then relayed)
  bare-wasi   a hand-written Rust WASI-HTTP pass-through component (benches/bare-wasi), built the
              same way, under the same `wasmtime serve`
  portkey     Portkey's gateway (npm), with --peers
  litellm     LiteLLM proxy (PyPI), with --peers

The runtime under test is pinned to CPU 1; the load tool (wrk), the mock and this script to CPU 0.
For each target: non-stream throughput and p50/p99 latency at concurrency 1 and 32, the runtime's
CPU time per request, time to first byte and total time of 100-chunk streams, its CPU time per
relayed chunk (8 streams of 600 chunks paced 5 ms apart, then one of 20,000 flat out), and its
memory over one 100,000-chunk stream. CPU is the runtime's whole process tree, read from /proc
(per-thread schedstat, nanoseconds). With --rounds N every target is started once and measured N
times, round by round, and the medians are reported. Prints Markdown tables (also written to
target/bench/results.md) with the ratios the issue's targets are stated in. Numbers only: nothing
here fails a build.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
KEY = "sk-bench-key"
COMPLETION_TOKENS = 16
STREAM_CHUNKS = 100
LONG_STREAM_CHUNKS = 100_000
# Per-chunk CPU: streams paced as a backend generates tokens, and one flat out.
PACED_STREAMS, PACED_CHUNKS, PACED_DELAY_MS = 8, 600, 5
FLAT_CHUNKS = 20_000
TICKS = os.sysconf("SC_CLK_TCK")
processes = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, cpu, env=None, cwd=None, log=None):
    """Starts a process pinned to `cpu`, in its own process group (stopped at exit)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(["taskset", "-c", str(cpu), *args], env=env, cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    processes.append(proc)
    return proc


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except Exception:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except Exception:
            pass


def wait_http(url, headers=None, timeout=60, body=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


def descendants(pid):
    """pid and every process below it (workerd and node may fork helpers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo.extend(int(c) for c in children)
    return out


def cpu_ticks(pid):
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def cpu_ns(pid):
    """CPU time of pid's process tree in ns: every live thread's schedstat (exact, unlike the
    10 ms ticks of /proc/PID/stat). The runtimes keep their threads, so none is lost mid-run."""
    total = 0
    for p in descendants(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                total += int(Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def rss_kib(pid):
    total = 0
    for p in descendants(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def chat_body(stream=False, chunks=COMPLETION_TOKENS, delay_ms=0):
    mock = {"chunks": chunks, **({"delay_ms": delay_ms} if delay_ms else {})}
    return json.dumps({"model": MODEL, "stream": stream, "max_tokens": max(chunks, 1),
                       "messages": [{"role": "user", "content": "hi"}], "mock": mock})


def wrk(url, headers, connections, seconds):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\nwrk.body = %s\n' % json.dumps(chat_body()))
    for k, v in {"Content-Type": "application/json", **headers}.items():
        script.write(f'wrk.headers["{k}"] = "{v}"\n')
    script.close()
    threads = 1 if connections == 1 else 2
    out = subprocess.run(["taskset", "-c", "0", "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", script.name, url], capture_output=True, text=True).stdout
    os.unlink(script.name)
    def latency(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": latency(50), "p99": latency(99),
            "requests": int(total.group(1)) if total else 0, "errors": int(non2xx.group(1)) if non2xx else 0}


def stream_once(host, port, path, headers, chunks, delay_ms=0):
    """One streamed completion over a raw socket: (time to first body byte, time to the end of the
    chunked body) in ms. The end is the terminating chunk, not the connection's close."""
    body = chat_body(stream=True, chunks=chunks, delay_ms=delay_ms).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close"] + [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection((host, port))
    started = time.perf_counter()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    head_buf, first, tail = b"", None, b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        if first is None:
            head_buf += data
            if b"\r\n\r\n" in head_buf and len(head_buf) > head_buf.index(b"\r\n\r\n") + 4:
                first = time.perf_counter()
                status = head_buf.split(b" ", 2)[1]
                if status != b"200":
                    raise RuntimeError(f"stream answered {status.decode()}: {head_buf[:300]!r}")
                data = head_buf[head_buf.index(b"\r\n\r\n") + 4:]
            else:
                continue
        tail = (tail + data)[-16:]
        if tail.endswith(b"\r\n0\r\n\r\n") or tail == b"0\r\n\r\n":
            break
    total = time.perf_counter()
    sock.close()
    return ((first or total) - started) * 1000, (total - started) * 1000


def measure(name, url, headers, pid, seconds, memory=True):
    """One round of every measurement of one target."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    port = int(port)
    path = "/v1/chat/completions"
    full = f"http://{host}:{port}{path}"
    wrk(full, headers, 8, 2)  # warm up
    result = {"name": name}
    for c in (1, 32):
        before = cpu_ns(pid) if pid else 0
        r = wrk(full, headers, c, seconds)
        after = cpu_ns(pid) if pid else 0
        result[f"c{c}"] = r
        if pid and r["requests"]:
            result[f"cpu_us_c{c}"] = (after - before) / 1e3 / r["requests"]
    ttfb, totals = [], []
    for _ in range(20):
        a, b = stream_once(host, port, path, headers, STREAM_CHUNKS)
        ttfb.append(a)
        totals.append(b)
    result["stream_ttfb_ms"] = statistics.median(ttfb)
    result["stream_total_ms"] = statistics.median(totals)
    if pid:
        result.update(chunk_cpu(host, port, path, headers, pid))
    if pid and memory:
        samples = []
        import threading
        done = threading.Event()
        def sample():
            while not done.is_set():
                samples.append(rss_kib(pid))
                time.sleep(0.1)
        t = threading.Thread(target=sample)
        idle = rss_kib(pid)
        t.start()
        _, long_ms = stream_once(host, port, path, headers, LONG_STREAM_CHUNKS)
        done.set()
        t.join()
        result["rss_idle_mib"] = idle / 1024
        result["rss_max_mib"] = max(samples) / 1024 if samples else float("nan")
        result["long_stream_s"] = long_ms / 1000
    return result


def chunk_cpu(host, port, path, headers, pid):
    """The runtime's CPU time per relayed chunk: while PACED_STREAMS streams of PACED_CHUNKS chunks
    PACED_DELAY_MS apart go through it at once (a model generating tokens), then while one stream of
    FLAT_CHUNKS chunks goes through flat out. Includes each stream's own request cost, spread over
    its chunks."""
    import threading
    out = {}
    errors = []
    def one():
        try:
            stream_once(host, port, path, headers, PACED_CHUNKS, PACED_DELAY_MS)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    before = cpu_ns(pid)
    threads = [threading.Thread(target=one) for _ in range(PACED_STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["chunk_us_paced"] = (cpu_ns(pid) - before) / 1e3 / (PACED_STREAMS * PACED_CHUNKS)
    before = cpu_ns(pid)
    _, flat_ms = stream_once(host, port, path, headers, FLAT_CHUNKS)
    out["chunk_us_flat"] = (cpu_ns(pid) - before) / 1e3 / FLAT_CHUNKS
    out["flat_stream_s"] = flat_ms / 1000
    if errors:
        raise errors[0]
    return out


def launcher(*args):
    """How the e2e suite starts a runtime (tests/support/launch.rs, through examples/launch.rs):
    the one place each runtime's command line and configuration are written. Returns (argv, cwd)."""
    out = subprocess.run(["cargo", "run", "-q", "--example", "launch", "--", *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    spec = json.loads(out)
    return spec["argv"], spec["cwd"]


def env_args(variables):
    return [f"{k}={v}" for k, v in variables.items()]


def gateway_vars(mock_url, target):
    """The gateway's configuration; a `*-committed` target commits every stream at once, so its
    streams take the path of a long prefill (kept alive, then relayed once a backend begins)."""
    import hashlib
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    variables = {
        "GATEWAY_BACKENDS": json.dumps([{"name": "mock", "url": mock_url, "models": [MODEL]}]),
        "GATEWAY_API_KEYS": json.dumps([{"id": "bench", "sha256": sha, "models": ["*"]}]),
        "GATEWAY_PLAYGROUND": "false",
        "GATEWAY_MAX_TOKENS": str(LONG_STREAM_CHUNKS * 2),
    }
    if target.endswith("-committed"):
        variables["GATEWAY_STREAM_COMMIT_MS"] = "0"
    return variables


def wasmtime_flags(args):
    """`--wasmtime "FLAGS"` as launcher arguments (each flag passed through to wasmtime serve)."""
    flags = []
    for flag in (args or "").split():
        flags += ["--flag", flag]
    return flags


def launch(target, state, mock_url, auth, wasmtime=""):
    """Starts `target` in front of the mock; returns (url, headers, process to measure)."""
    port = free_port()
    proc, headers = None, auth
    if target == "direct":
        url, headers = mock_url, {}
    elif target in ("worker", "worker-committed", "bare-js") or target.startswith("js:"):
        d = state / target.replace("/", "_")
        if target.startswith("worker"):
            argv, cwd = launcher("workerd", d, port, *env_args(gateway_vars(mock_url, target)))
        else:
            module = ROOT / "benches/bare-worker.js" if target == "bare-js" else Path(target[3:]).resolve()
            argv, cwd = launcher("workerd", d, port, "--module", module, f"BACKEND_URL={mock_url}")
        proc = start(argv, cpu=1, cwd=cwd, log=d / "workerd.log")
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v1/chat/completions", headers, body=chat_body().encode())
    elif target in ("spin", "spin-committed"):
        redis_port = free_port()
        argv, _ = launcher("redis", redis_port)
        start(argv, cpu=0)
        variables = {**gateway_vars(mock_url, target), "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_port}"}
        argv, _ = launcher("wasmtime", port, *wasmtime_flags(wasmtime), *env_args(variables))
        proc = start(argv, cpu=1, log=state / "wasmtime.log")
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v1/chat/completions", headers, body=chat_body().encode())
    elif target == "bare-wasi":
        component = ROOT / "target/wasm32-wasip2/release/bare_wasi.wasm"
        argv, _ = launcher("wasmtime", port, "--component", component, *wasmtime_flags(wasmtime),
                           f"BACKEND_URL={mock_url}")
        proc = start(argv, cpu=1, log=state / "bare-wasi.log")
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v1/chat/completions", headers, body=chat_body().encode())
    elif target == "portkey":
        gateway = ROOT / "benches/peers/node_modules/@portkey-ai/gateway/build/start-server.js"
        proc = start(["node", str(gateway), f"--port={port}", "--headless"], cpu=1, log=state / "portkey.log")
        headers = {**auth, "x-portkey-provider": "openai", "x-portkey-custom-host": f"{mock_url}/v1"}
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v1/chat/completions", headers, body=chat_body().encode())
    elif target == "litellm":
        cfg = state / "litellm.yaml"
        cfg.write_text(f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
                       f"      api_base: {mock_url}/v1\n      api_key: sk-mock\n"
                       f"general_settings:\n  master_key: {KEY}\n")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        proc = start([str(ROOT / ".venv-litellm/bin/litellm"), "--config", str(cfg), "--host", "127.0.0.1",
                      "--port", str(port)], cpu=1, env=env, log=state / "litellm.log")
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/v1/chat/completions", headers, timeout=120, body=chat_body().encode())
    return url, headers, proc


TARGETS = ["direct", "worker", "bare-js", "spin", "bare-wasi"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true", help="also measure Portkey and LiteLLM")
    parser.add_argument("--only", nargs="*", help="targets to measure; `js:FILE` adds a JavaScript module "
                        "served like the bare worker (BACKEND_URL bound), for experiments")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "10")))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "1")),
                        help="measure every target this many times, round by round; report medians")
    parser.add_argument("--wasmtime", default=os.environ.get("BENCH_WASMTIME", ""),
                        help="extra `wasmtime serve` flags for spin and bare-wasi, given with `=`, e.g. "
                             "--wasmtime='-Opooling-allocator=y --max-instance-reuse-count=128'")
    parser.add_argument("--profile", action="store_true",
                        help="instead of measuring, profile the worker in workerd (V8 sampling profiler) under c=32 load")
    args = parser.parse_args()
    # This script is load, like wrk and the mock: it stays off the runtime's CPU.
    os.sched_setaffinity(0, {0})
    if args.profile:
        return profile_worker(args.seconds)
    state = Path(tempfile.mkdtemp(prefix="edge-gateway-bench-"))
    rounds = []
    try:
        mock_port = free_port()
        start([str(ROOT / "target/release/mock-backend"), "--addr", f"127.0.0.1:{mock_port}", "--model", MODEL], cpu=0)
        mock_url = f"http://127.0.0.1:{mock_port}"
        wait_http(f"{mock_url}/health")
        auth = {"Authorization": f"Bearer {KEY}"}
        targets = TARGETS + (["portkey", "litellm"] if args.peers else [])
        # `js:FILE` runs any JavaScript module as a worker on the same workerd (experiments).
        targets = [t for t in targets if not args.only or t in args.only]
        targets += [t for t in args.only or [] if t.startswith("js:") or t.endswith("-committed")]
        running = {}
        for target in targets:
            print(f"== starting {target}", file=sys.stderr, flush=True)
            try:
                running[target] = launch(target, state, mock_url, auth, args.wasmtime)
            except Exception as e:  # one target that will not start must not lose the others
                print(f"   {target} did not start: {e}", file=sys.stderr)
        for n in range(args.rounds):
            results = []
            for target, (url, headers, proc) in running.items():
                print(f"== round {n + 1}/{args.rounds}: {target}", file=sys.stderr, flush=True)
                try:
                    results.append(measure(target, url, headers, proc.pid if proc else None, args.seconds,
                                           memory=n == 0))
                except Exception as e:  # one broken target must not lose the others' numbers
                    print(f"   {target} failed: {e}", file=sys.stderr)
            rounds.append(results)
    finally:
        for p in processes:
            stop(p)
    report(rounds, args)


def profile_worker(seconds):
    """Runs the worker under wrk at c=32 with workerd's inspector on, and prints where its CPU goes."""
    state = Path(tempfile.mkdtemp(prefix="edge-gateway-profile-"))
    try:
        mock_port = free_port()
        start([str(ROOT / "target/release/mock-backend"), "--addr", f"127.0.0.1:{mock_port}", "--model", MODEL], cpu=0)
        mock_url = f"http://127.0.0.1:{mock_port}"
        wait_http(f"{mock_url}/health")
        port, inspector = free_port(), free_port()
        d = state / "worker"
        argv, cwd = launcher("workerd", d, port, *env_args(gateway_vars(mock_url, "worker")))
        argv = argv[:-1] + [f"--inspector-addr=127.0.0.1:{inspector}", argv[-1]]
        start(argv, cpu=1, cwd=cwd, log=d / "workerd.log")
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {KEY}"}
        wait_http(f"{url}/v1/chat/completions", auth, body=chat_body().encode())
        load = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benches')!r}); import bench; "
                                 f"bench.wrk({url + '/v1/chat/completions'!r}, {auth!r}, 32, {seconds + 2})"])
        time.sleep(1)
        subprocess.run(["node", "--experimental-websocket", str(ROOT / "benches/profile.mjs"), str(inspector), str(seconds)], check=True)
        load.wait()
    finally:
        for p in processes:
            stop(p)


def median_results(rounds):
    """Per target, the median of every number over the rounds (memory from the first round)."""
    by = {}
    for results in rounds:
        for r in results:
            by.setdefault(r["name"], []).append(r)
    merged = []
    for name, runs in by.items():
        m = {"name": name, "rounds": len(runs)}
        for key in runs[0]:
            if key == "name":
                continue
            if isinstance(runs[0][key], dict):
                m[key] = {k: statistics.median(r[key][k] for r in runs if key in r) for k in runs[0][key]}
            elif key in ("rss_idle_mib", "rss_max_mib", "long_stream_s"):
                m[key] = runs[0][key]
            else:
                m[key] = statistics.median(r[key] for r in runs if key in r)
        merged.append(m)
    return merged


def report(rounds, args):
    results = median_results(rounds)
    by = {r["name"]: r for r in results}
    direct, bare = by.get("direct"), by.get("bare-js")
    def ratio(r, base, key):
        return f"{r[key]['rps'] / base[key]['rps']:.0%}" if base and base[key]["rps"] else "–"
    def num(r, key, fmt="{:.0f}"):
        return fmt.format(r[key]) if key in r else "–"
    n = max((r["rounds"] for r in results), default=0)
    lines = [f"`BENCH_SECONDS={args.seconds}`, {n} round(s), medians"
             + (f"; wasmtime serve {args.wasmtime}" if args.wasmtime else "") + ".", "",
             "| target | c=1 req/s | c=1 p50 / p99 ms | c=32 req/s | c=32 p50 / p99 ms | c=32 vs direct | c=32 vs bare JS | CPU µs/req (c=32) | CPU µs/chunk paced / flat | stream TTFB / total ms | RSS idle → max over 100k-chunk stream |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c1, c32 = r["c1"], r["c32"]
        mem = f"{r['rss_idle_mib']:.0f} → {r['rss_max_mib']:.0f} MiB ({r['long_stream_s']:.1f} s)" if "rss_max_mib" in r else "–"
        err = f" ({c32['errors']:.0f} non-2xx)" if c32["errors"] else ""
        chunk = f"{num(r, 'chunk_us_paced', '{:.1f}')} / {num(r, 'chunk_us_flat', '{:.1f}')}"
        lines.append(f"| {r['name']} | {c1['rps']:.0f} | {c1['p50']:.2f} / {c1['p99']:.2f} | {c32['rps']:.0f}{err} | "
                     f"{c32['p50']:.2f} / {c32['p99']:.2f} | {ratio(r, direct, 'c32')} | {ratio(r, bare, 'c32')} | "
                     f"{num(r, 'cpu_us_c32')} | {chunk} | "
                     f"{r['stream_ttfb_ms']:.2f} / {r['stream_total_ms']:.1f} | {mem} |")
    lines += ["", "Against each runtime's bare pass-through (same run):", "",
              "| ours vs bare | CPU/request | c=32 throughput | CPU µs/chunk added, paced / flat | CPU/chunk ratio, paced / flat | stream TTFB added |",
              "|---|---|---|---|---|---|"]
    for ours, base in (("worker", "bare-js"), ("worker-committed", "bare-js"), ("spin", "bare-wasi"),
                       ("spin-committed", "bare-wasi")):
        o, b = by.get(ours), by.get(base)
        if not (o and b and "cpu_us_c32" in o and "cpu_us_c32" in b):
            continue
        paced = o["chunk_us_paced"] - b["chunk_us_paced"]
        flat = o["chunk_us_flat"] - b["chunk_us_flat"]
        lines.append(f"| {ours} vs {base} | {o['cpu_us_c32'] / b['cpu_us_c32']:.2f}× ({o['cpu_us_c32']:.0f} / {b['cpu_us_c32']:.0f} µs) | "
                     f"{o['c32']['rps'] / b['c32']['rps']:.0%} | {paced:+.1f} / {flat:+.1f} µs | "
                     f"{o['chunk_us_paced'] / b['chunk_us_paced']:.2f}× / {o['chunk_us_flat'] / b['chunk_us_flat']:.2f}× | "
                     f"{o['stream_ttfb_ms'] - b['stream_ttfb_ms']:+.2f} ms |")
    if direct:
        lines.append("")
        for r in results:
            if r["name"] == "direct":
                continue
            lines.append(f"- {r['name']}: added latency over direct at c=32: p50 +{r['c32']['p50'] - direct['c32']['p50']:.2f} ms, "
                         f"p99 +{r['c32']['p99'] - direct['c32']['p99']:.2f} ms; stream TTFB +{r['stream_ttfb_ms'] - direct['stream_ttfb_ms']:.2f} ms")
    for name, path in [("worker", ROOT / "build/worker/index_bg.wasm"),
                       ("spin", ROOT / "target/wasm32-wasip2/release/edge_gateway.wasm"),
                       ("bare-wasi", ROOT / "target/wasm32-wasip2/release/bare_wasi.wasm")]:
        if path.exists():
            raw = path.read_bytes()
            import gzip
            lines.append(f"- {name} wasm ({path.relative_to(ROOT)}): {len(raw) / 1024:.0f} KiB raw, "
                         f"{len(gzip.compress(raw, 9)) / 1024:.0f} KiB gzip")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"rounds": rounds, "medians": results}, indent=1))


if __name__ == "__main__":
    main()
