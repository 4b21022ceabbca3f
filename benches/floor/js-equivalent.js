// Floor experiment: every platform call the gateway's Workers adapter makes for one non-stream
// request, in plain JavaScript and without wasm — the request body read whole, its headers
// listed and the backend's built, a timer and an AbortController for the backend call,
// request.signal watched, the answer read whole and a new Response built, one JSON log line.
// What the gateway costs above this is its wasm and the crossings.
function lines(h) { let s = ""; for (const [k, v] of h) s += k + "\n" + v + "\n"; return s; }
function toHeaders(l) { const h = new Headers(); const p = l.split("\n"); for (let i = 0; i + 1 < p.length; i += 2) h.append(p[i], p[i+1]); return h; }
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    request.signal.onabort = () => {};
    const ac = new AbortController(); const t = setTimeout(() => ac.abort(), 60000);
    const body = new Uint8Array(await request.arrayBuffer());
    const hl = lines(request.headers); const out = toHeaders("content-type\napplication/json\naccept\napplication/json\nx-request-id\n68e86b36-159f-428c-9c60-94272581ed58\ntraceparent\n00-65c1c85b25dc682df6d6981647283085-998e90956357da09-01\n");
    const r = await fetch(env.BACKEND_URL + url.pathname, { method: request.method, headers: out, body, signal: ac.signal });
    clearTimeout(t);
    const rl = lines(r.headers); const bytes = new Uint8Array(await r.arrayBuffer());
    const resp = new Response(bytes, { status: r.status, headers: toHeaders("content-type\napplication/json\nx-request-id\n68e86b36-159f-428c-9c60-94272581ed58\ntraceparent\n00-65c1c85b25dc682df6d6981647283085-998e90956357da09-01\n") });
    console.log(JSON.stringify({ts: Date.now(), request_id: "68e86b36-159f-428c-9c60-94272581ed58", trace_id: "65c1c85b25dc682df6d6981647283085", span_id: "998e90956357da09", method: "POST", path: url.pathname, key_id: "bench", model: "bench-model", stream: false, backend: "mock", attempts: 1, status: 200, error: null, detail: null, stream_end: null, latency_ms: 3, ttfb_ms: 3, usage: {prompt_tokens: 1, completion_tokens: 16, total_tokens: 17}}));
    return resp;
  },
};
