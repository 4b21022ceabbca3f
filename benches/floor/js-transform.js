// Floor experiment: the bare pass-through with a no-op JavaScript TransformStream on the stream
// (one JavaScript call per chunk through pipeThrough).
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const r = await fetch(env.BACKEND_URL + url.pathname, { method: request.method, headers: request.headers, body: request.body });
    if (!(r.headers.get("content-type") || "").startsWith("text/event-stream")) return r;
    const body = r.body.pipeThrough(new TransformStream({ transform(chunk, c) { c.enqueue(chunk); } }));
    return new Response(body, { status: r.status, headers: r.headers });
  },
};
