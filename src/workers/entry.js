// The Workers entry point: the one hand-written module between workerd and the gateway's wasm
// (`make worker` bundles it with wasm-bindgen's glue into build/worker/shim.mjs, wrangler.toml's
// `main`). It exists so that a request crosses between JavaScript and wasm a handful of times
// instead of dozens, and no platform call costs a Rust future round trip:
//
// - `start` hands the core the request — its headers as one string, a small body as one buffer —
//   and the core runs until it waits on the platform;
// - the platform's events come back one call each — a backend's answer (`fetched`: its head, and
//   a small answer's body), the request's one timer (`tick`), the client leaving (`gone`) — and
//   the core runs on until it waits again;
// - the answer comes out in one call (`Host.respond`), and a committed stream's bytes never pass
//   through a Rust future: `pump` reads the backend, hands each chunk to the core's relay
//   (`Relay.chunk`, one synchronous call that says "forward as is", "send these bytes" or "end
//   with this event") and writes what it says.
//
// Plumbing only: every rule — what to forward, when time is up, what an end means — is the
// core's (src/core/upstream/relay.rs, src/core/gateway.rs).
import * as gateway from "../../build/glue/index.js";
import { headerLines, isEventStream, knownLengthAtMost, toHeaders } from "./platform.js";

export { RateLimiter } from "../../build/glue/index.js";

/** What `Relay` calls return (the same numbers as in src/cloudflare.rs). */
const SEND = 1;
const END = 2;
const AS_IS = 4;

/** Bodies of known length up to this size are read in one call (see `wholeBodyMax`). */
let wholeBodyMax;

/** Requests whose answer is still due: a trap in the wasm loses them all (see `broken`). */
const unanswered = new Set();

/**
 * Which instance of the wasm is current: a trap re-instantiates it (its request ids restart and
 * its objects are gone), so a `Host` of an older one must never call in again — its id may now
 * name another request, and a stale object's `free` would free the new instance's memory.
 */
let generation = 0;

/**
 * One request's JavaScript side: what the core asks of the platform for it (backend calls, its
 * one timer, `waitUntil`) and its answer. The wasm names it by `id`.
 */
class Host {
  constructor(ctx, resolve, reject) {
    this.ctx = ctx;
    this.resolve = resolve;
    this.reject = reject;
    this.id = 0;
    this.timer = undefined;
    this.generation = generation;
    unanswered.add(this);
  }

  /** Whether the wasm instance that knows this request is still the current one. */
  live() {
    return this.generation === generation;
  }

  /** Calls into the wasm for this request; a failure there fails the request, not the isolate. */
  call(f) {
    if (!this.live()) return;
    try {
      f();
    } catch (e) {
      broken(this, e);
    }
  }

  arm(ms) {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.call(() => gateway.tick(this.id));
    }, ms);
  }

  disarm() {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  schedule() {
    queueMicrotask(() => this.call(() => gateway.poll(this.id)));
  }

  gone() {
    this.call(() => gateway.gone(this.id));
  }

  waitUntil(promise) {
    this.ctx.waitUntil(promise);
  }

  /**
   * Starts a backend call; its outcome goes back to the wasm as `fetched` or `fetchFailed`.
   * `body` is a view of wasm memory, so it is copied now. A small answer of known length (not an
   * event stream) is read whole here; any other body is handed over as a reader.
   */
  fetch(call, url, method, headers, body, wholeMax) {
    const controller = new AbortController();
    const failed = (e) => this.call(() => gateway.fetchFailed(this.id, call, String(e)));
    try {
      const init = { method, headers: toHeaders(headers), signal: controller.signal };
      if (body !== undefined) init.body = body.slice();
      fetch(url, init).then((response) => this.fetched(call, response, wholeMax, failed), failed);
    } catch (e) {
      Promise.resolve(e).then(failed);
    }
    return controller;
  }

  async fetched(call, response, wholeMax, failed) {
    const lines = headerLines(response.headers);
    let body;
    let reader;
    if (response.body === null) {
      body = new Uint8Array(0);
    } else if (!isEventStream(response.headers.get("content-type")) && knownLengthAtMost(response.headers, wholeMax)) {
      try {
        body = new Uint8Array(await response.arrayBuffer());
      } catch (e) {
        return failed(e);
      }
    } else {
      reader = response.body.getReader();
    }
    this.call(() => gateway.fetched(this.id, call, response.status, lines, body, reader));
  }

  /** The answer, whole. `body` is a view of wasm memory: the Response copies it. */
  respond(status, headers, body) {
    this.answer(() => new Response(body.length > 0 ? body.slice() : null, { status, headers: toHeaders(headers) }));
  }

  /** The answer is a committed stream: pumped from `reader` through `relay`. */
  respondRelay(status, headers, relay, reader) {
    this.answer(() => {
      const { readable, writable } = new IdentityTransformStream();
      this.ctx.waitUntil(pump(relay, reader, writable.getWriter(), this));
      return new Response(readable, { status, headers: toHeaders(headers) });
    });
  }

  /**
   * The answer is a stream the wasm yields (a committed stream's keep-alive comments) until a
   * backend begins: from then on `pump` relays it, as for `respondRelay`.
   */
  respondStream(status, headers, streamed) {
    this.answer(() => {
      const { readable, writable } = new IdentityTransformStream();
      this.ctx.waitUntil(pumpStreamed(streamed, writable.getWriter(), this));
      return new Response(readable, { status, headers: toHeaders(headers) });
    });
  }

  answer(make) {
    this.disarm();
    unanswered.delete(this);
    try {
      this.resolve(make());
    } catch (e) {
      this.reject(e);
    }
  }

  /** The stream's pump is over: the wasm forgets the request (and nothing wakes it again). */
  done() {
    this.disarm();
    this.call(() => gateway.done(this.id));
    this.disarm();
  }
}

/**
 * A call into the wasm threw. The request fails (workerd answers 500); a trap (the wasm's
 * abort: it is re-instantiated on the next call) loses every request under way, so they fail too.
 */
function broken(host, error) {
  const trapped = error instanceof WebAssembly.RuntimeError;
  if (trapped && host.live()) generation += 1;
  const lost = trapped ? [...unanswered] : [host];
  for (const h of lost) {
    unanswered.delete(h);
    h.disarm();
    h.reject(error);
  }
}

async function handle(request, env, ctx) {
  wholeBodyMax ??= gateway.wholeBodyMax(env);
  let body;
  let stream;
  if (request.body !== null) {
    // A small body is read here in one call; a large or unsized one streams through the core,
    // which refuses it at the cap without buffering it.
    if (knownLengthAtMost(request.headers, wholeBodyMax)) body = new Uint8Array(await request.arrayBuffer());
    else stream = request.body;
  }
  const path = new URL(request.url).pathname;
  const lines = headerLines(request.headers);
  return new Promise((resolve, reject) => {
    const host = new Host(ctx, resolve, reject);
    // (A property, not addEventListener: measured cheaper in workerd.)
    request.signal.onabort = () => host.gone();
    host.call(() => {
      host.id = gateway.start(request.method, path, lines, body, stream, host, env);
    });
  });
}

/**
 * Pumps a committed stream: the backend's chunks through the core's relay to the client. One
 * timer at a time serves the relay's idle and total deadlines (`Relay.tick` says when next);
 * `waitingSince` tells it whether the pump is waiting on the backend (idle time counts) or on the
 * client (only the total deadline does).
 */
async function pump(relay, reader, writer, host) {
  // Starts once the wasm call that handed the relay over has returned.
  await undefined;
  let over = false;
  let timer;
  let waitingSince = -1;
  // Set when the timer last fired while the pump waited on the client: it is then armed for the
  // total deadline alone, so the next wait on the backend asks again (its idle deadline counts).
  let stale = false;
  let closing = Promise.resolve();

  // The relay said the stream ends: its last bytes, then the end; the backend is let go of.
  const finish = (code) => {
    if (over) return;
    over = true;
    if (timer !== undefined) clearTimeout(timer);
    const last = code & SEND ? relay.take() : undefined;
    relay.free();
    host.done();
    reader.cancel().catch(() => {});
    closing = (async () => {
      try {
        if (last !== undefined && last.length > 0) await writer.write(last);
        await writer.close();
      } catch {
        // The client went away meanwhile: nothing left to tell it.
      }
    })();
  };

  // The client went away (a write failed) or the wasm broke: the relay reports the end. A trap
  // fails every request the lost instance knew; its relay is then never touched again.
  const abandon = (error) => {
    if (over) return;
    over = true;
    if (timer !== undefined) clearTimeout(timer);
    if (error instanceof WebAssembly.RuntimeError) broken(host, error);
    if (host.live()) {
      try {
        relay.free();
      } catch {
        // Nothing left to free.
      }
    }
    host.done();
    reader.cancel().catch(() => {});
    writer.abort().catch(() => {});
  };

  const onTimer = () => {
    timer = undefined;
    if (over) return;
    try {
      stale = waitingSince < 0;
      const next = relay.tick(Date.now(), waitingSince);
      if (next >= 0) timer = setTimeout(onTimer, next);
      else finish(-next);
    } catch (e) {
      abandon(e);
    }
  };

  // Forwards what the relay said about `chunk`; false once the stream has ended.
  const emit = async (code, chunk) => {
    if (code === AS_IS) {
      await writer.write(chunk);
      return true;
    }
    if (code & END) {
      finish(code);
      return false;
    }
    if (code & SEND) await writer.write(relay.take());
    return true;
  };

  try {
    if (!(await emit(relay.first(), undefined)) || over) return closing;
    const now = Date.now();
    const first = relay.tick(now, now);
    if (first < 0) {
      finish(-first);
      return closing;
    }
    timer = setTimeout(onTimer, first);
    for (;;) {
      waitingSince = Date.now();
      if (stale) {
        if (timer !== undefined) clearTimeout(timer);
        onTimer();
        if (over) return closing;
      }
      let next;
      try {
        next = await reader.read();
      } catch {
        // The backend reset, or the core let go of it (the client left, a deadline passed).
        if (!over) finish(relay.failed());
        return closing;
      }
      waitingSince = -1;
      if (over) return closing;
      const code = next.done ? relay.closed() : relay.chunk(next.value);
      if (!(await emit(code, next.value)) || over) return closing;
    }
  } catch (e) {
    abandon(e);
  }
  return closing;
}

/**
 * Writes what the wasm yields for a stream committed before its backend began — keep-alive
 * comments, or the final error event — until it ends, or a backend begins and `pump` takes the
 * relay over. `streamed` is freed only after that: dropping it reports the client gone.
 */
async function pumpStreamed(streamed, writer, host) {
  // Starts once the wasm call that handed the stream over has returned.
  await undefined;
  let relayed;
  try {
    for (;;) {
      const next = await streamed.next();
      if (next === null) {
        const relay = streamed.relay();
        relayed = pump(relay, streamed.reader(), writer, host);
        break;
      }
      if (next === undefined) {
        await writer.close();
        break;
      }
      await writer.write(next);
    }
  } catch (e) {
    // The client went away (a write failed), or the wasm failed.
    if (e instanceof WebAssembly.RuntimeError) broken(host, e);
    writer.abort().catch(() => {});
  }
  // `pump` reports the end and lets go of the request itself; otherwise freeing the stream
  // reports its end (when it has not ended: the client left) before the request goes.
  if (relayed !== undefined) await relayed;
  if (host.live()) streamed.free();
  if (relayed === undefined) host.done();
}

export default {
  fetch: handle,
};
