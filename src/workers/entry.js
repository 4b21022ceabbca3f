// The Workers entry point: the one hand-written module between workerd and the gateway's wasm
// (`make worker` bundles it with wasm-bindgen's glue into build/worker/shim.mjs, wrangler.toml's
// `main`). It exists so that a request crosses into wasm a handful of times instead of dozens:
// the request's headers go in as one string and its body as one buffer, the answer comes back as
// one object, and a stream's bytes never pass through a Rust future — this module reads the
// backend, hands each chunk to the core's relay (`Relay.chunk`, one synchronous call that says
// "forward as is", "send these bytes" or "end with this event") and writes what it says.
// Plumbing only: every rule — what to forward, when time is up, what an end means — is the
// core's (src/core/upstream/relay.rs).
import * as gateway from "../../build/glue/index.js";
import { headerLines, knownLengthAtMost, toHeaders } from "./platform.js";

export { RateLimiter } from "../../build/glue/index.js";

/** What `Relay` calls return (see `Relay` in src/cloudflare.rs). */
const SEND = 1;
const END = 2;
const AS_IS = 4;

/** Bodies of known length up to this size are read in one call (see `wholeBodyMax`). */
let wholeBodyMax;

/**
 * One request's side of the platform: its timer (the core's sleeps, one setTimeout at a time),
 * `waitUntil`, and the client going away. `req` is the wasm's half; both live until the request's
 * last byte.
 */
class Host {
  constructor(ctx) {
    this.ctx = ctx;
    this.timer = undefined;
    this.req = undefined;
  }

  arm(ms) {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.req?.tick();
    }, ms);
  }

  disarm() {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  waitUntil(promise) {
    this.ctx.waitUntil(promise);
  }

  gone() {
    this.req?.gone();
  }

  /** The request is over on this side: the wasm keeps what its own tasks still need. */
  done() {
    const req = this.req;
    this.req = undefined;
    req?.free();
  }
}

async function handle(request, env, ctx) {
  wholeBodyMax ??= gateway.wholeBodyMax(env);
  const host = new Host(ctx);
  host.req = new gateway.Req(host);
  request.signal.addEventListener("abort", () => host.gone());
  let body;
  let stream;
  if (request.body !== null) {
    // A small body is read here in one call; a large or unsized one streams through the core,
    // which refuses it at the cap without buffering it.
    if (knownLengthAtMost(request.headers, wholeBodyMax)) body = new Uint8Array(await request.arrayBuffer());
    else stream = request.body;
  }
  const path = new URL(request.url).pathname;
  let reply;
  try {
    reply = await gateway.handle(request.method, path, headerLines(request.headers), body, stream, host.req, env);
  } catch (e) {
    host.done();
    throw e;
  }
  const status = reply.status;
  const kind = reply.kind;
  if (kind === 0) {
    const headers = toHeaders(reply.headers());
    const bytes = reply.body();
    reply.free();
    host.done();
    return new Response(bytes.length > 0 ? bytes : null, { status, headers });
  }
  if (kind === 1) {
    const headers = toHeaders(reply.headers());
    const relay = reply.relay();
    const reader = reply.reader();
    reply.free();
    const { readable, writable } = new IdentityTransformStream();
    ctx.waitUntil(pump(relay, reader, writable.getWriter(), host));
    return new Response(readable, { status, headers });
  }
  // Any other streamed body: the core's own stream, pulled through wasm.
  const response = reply.response();
  reply.free();
  host.done();
  return response;
}

/**
 * Pumps a committed stream: the backend's chunks through the core's relay to the client. One
 * timer at a time serves the relay's idle and total deadlines (`Relay.tick` says when next);
 * `waitingSince` tells it whether the pump is waiting on the backend (idle time counts) or on the
 * client (only the total deadline does).
 */
async function pump(relay, reader, writer, host) {
  let over = false;
  let timer;
  let waitingSince = -1;
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

  // The client went away (a write failed) or the wasm broke: the relay reports the end.
  const abandon = () => {
    if (over) return;
    over = true;
    if (timer !== undefined) clearTimeout(timer);
    relay.free();
    host.done();
    reader.cancel().catch(() => {});
    writer.abort().catch(() => {});
  };

  const onTimer = () => {
    timer = undefined;
    if (over) return;
    const next = relay.tick(Date.now(), waitingSince);
    if (next >= 0) timer = setTimeout(onTimer, next);
    else finish(-next);
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
  } catch {
    abandon();
  }
  return closing;
}

export default {
  fetch: handle,
};
