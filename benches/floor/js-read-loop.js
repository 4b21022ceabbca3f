// Floor experiment: the cheapest JavaScript-per-chunk pipe found — a read loop on the backend's
// body writing each chunk (unchanged) into workerd's native IdentityTransformStream. The
// gateway's pump (src/workers/entry.js) has this shape, plus one wasm call per chunk.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const r = await fetch(env.BACKEND_URL + url.pathname, { method: request.method, headers: request.headers, body: request.body });
    if (!(r.headers.get("content-type") || "").startsWith("text/event-stream")) return r;
    const { readable, writable } = new IdentityTransformStream();
    const reader = r.body.getReader();
    const writer = writable.getWriter();
    ctx.waitUntil((async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        await writer.write(value);
      }
      await writer.close();
    })());
    return new Response(readable, { status: r.status, headers: r.headers });
  },
};
