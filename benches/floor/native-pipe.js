// Floor experiment (BENCHMARKS.md "Where the floor is"): the bare pass-through, its stream piped
// through workerd's native IdentityTransformStream — no JavaScript per chunk.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const r = await fetch(env.BACKEND_URL + url.pathname, { method: request.method, headers: request.headers, body: request.body });
    if (!(r.headers.get("content-type") || "").startsWith("text/event-stream")) return r;
    const { readable, writable } = new IdentityTransformStream();
    r.body.pipeTo(writable);
    return new Response(readable, { status: r.status, headers: r.headers });
  },
};
