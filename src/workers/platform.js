// Small helpers shared by the entry point and the wasm (which imports `readChunk` through
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
export function isEventStream(type) {
  return type !== null && type.split(";")[0].trim().toLowerCase() === "text/event-stream";
}

/** A content length of at most `max` bytes, as the core reads one. */
export function knownLengthAtMost(headers, max) {
  const length = headers.get("content-length");
  return length !== null && /^\s*\d+\s*$/.test(length) && Number(length) <= max;
}

/** The next chunk of a body: a Uint8Array, or undefined at its end. */
export async function readChunk(reader) {
  const { done, value } = await reader.read();
  return done ? undefined : value;
}
