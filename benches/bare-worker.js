// The pass-through a user would write by hand: every request forwarded to the backend as is.
// `make bench` runs it on the same workerd as the gateway, as the baseline for "the cost of Rust
// and of everything the gateway checks".
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.BACKEND_URL + url.pathname + url.search, {
      method: request.method,
      headers: request.headers,
      body: request.body,
    });
  },
};
