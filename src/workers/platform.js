// What the gateway's wasm asks of workerd, each in one call (imported by the wasm through
// wasm-bindgen: `#[wasm_bindgen(module = "/src/workers/platform.js")]` in src/cloudflare.rs).
// Plumbing only: no rule about the API lives here.

/** A header list as `name\nvalue\n` lines (`Headers::to_lines` in the core). */
export function headerLines(headers) {
  let lines = "";
  for (const [name, value] of headers) lines += name + "\n" + value + "\n";
  return lines;
}

/** `Headers::to_lines` text as a Headers object. */
export function toHeaders(lines) {
  const headers = new Headers();
  const parts = lines.split("\n");
  for (let i = 0; i + 1 < parts.length; i += 2) headers.append(parts[i], parts[i + 1]);
  return headers;
}

/** Whether a content type is `text/event-stream` (any parameters), as `http::is_event_stream`. */
function isEventStream(type) {
  return type !== null && type.split(";")[0].trim().toLowerCase() === "text/event-stream";
}

/** A content length of at most `max` bytes, as the core reads one. */
export function knownLengthAtMost(headers, max) {
  const length = headers.get("content-length");
  return length !== null && /^\s*\d+\s*$/.test(length) && Number(length) <= max;
}

/** The backend's answer, read by the wasm through getters. */
class Fetched {
  constructor(status, headers, body, reader) {
    this.status = status;
    this.headers = headers;
    this.body = body;
    this.reader = reader;
  }
}

/**
 * One backend call: the request sent, its head awaited, and a small answer of known length read
 * whole (not an event stream) — one promise for the wasm to await. A streamed answer comes back
 * as a reader. `controller` (the wasm's) aborts the call when the wasm lets go of it. `body` is a
 * view of wasm memory, so it is copied before the call returns.
 */
export function upstreamFetch(controller, url, method, headers, body, wholeMax) {
  const init = { method, headers: toHeaders(headers), signal: controller.signal };
  if (body !== undefined) init.body = body.slice();
  return answer(fetch(url, init), wholeMax);
}

async function answer(pending, wholeMax) {
  const response = await pending;
  const lines = headerLines(response.headers);
  if (response.body === null) return new Fetched(response.status, lines, new Uint8Array(0), undefined);
  if (!isEventStream(response.headers.get("content-type")) && knownLengthAtMost(response.headers, wholeMax)) {
    const whole = new Uint8Array(await response.arrayBuffer());
    return new Fetched(response.status, lines, whole, undefined);
  }
  return new Fetched(response.status, lines, undefined, response.body.getReader());
}

/** The next chunk of a body: a Uint8Array, or undefined at its end. */
export async function readChunk(reader) {
  const { done, value } = await reader.read();
  return done ? undefined : value;
}
