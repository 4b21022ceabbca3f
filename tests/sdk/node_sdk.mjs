// The official OpenAI Node SDK, unmodified, against the gateway.
// Run by the end-to-end suite with GATEWAY_URL (ending in /v1), KEY, RATE_KEY (60 requests per
// minute, for this script alone) and MODEL in the environment. Exits non-zero on any failure.
// With the argument `keep-alive`, runs only the long-prefill stream (see the end-to-end case).
import assert from "node:assert/strict";
import OpenAI from "openai";

const baseURL = process.env.GATEWAY_URL;
const model = process.env.MODEL;
const client = new OpenAI({ baseURL, apiKey: process.env.KEY, maxRetries: 0, timeout: 30_000 });
const expected = (n) => Array.from({ length: n }, (_, i) => `tok${i} `).join("");

if (process.argv[2] === "keep-alive") {
  // A 7 s prefill: the gateway commits the stream first and sends `: keep-alive` comments until
  // the first token; the SDK must skip them and see only the chunks.
  const stream = await client.chat.completions.create({
    model, messages: [{ role: "user", content: "hi" }], stream: true, mock: { chunks: 3, prefill_ms: 7000 },
  });
  let text = "";
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.equal(text, expected(3));
  console.log("keep-alive comments skipped: ok");
  process.exit(0);
}

const completion = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "hi" }], mock: { chunks: 4 },
});
assert.equal(completion.choices[0].message.content, expected(4));
assert.equal(completion.usage.completion_tokens, 4);
console.log("non-stream: ok");

const stream = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "hi" }], stream: true,
  stream_options: { include_usage: true }, mock: { chunks: 6 },
});
let text = "";
let usage = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(text, expected(6));
assert.equal(usage?.completion_tokens, 6);
console.log("stream: ok");

await assert.rejects(
  new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 }).models.list(),
  (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === "invalid_api_key",
);
console.log("401 AuthenticationError: ok");

await assert.rejects(
  client.chat.completions.create({ model, messages: [] }),
  (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "messages",
);
console.log("400 BadRequestError: ok");

const limited = new OpenAI({ baseURL, apiKey: process.env.RATE_KEY, maxRetries: 0 });
let refused = null;
for (let i = 0; i < 100 && !refused; i++) {
  try {
    await limited.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], mock: { chunks: 1 } });
  } catch (e) {
    assert.ok(e instanceof OpenAI.RateLimitError, String(e));
    assert.equal(e.code, "rate_limit_exceeded");
    refused = e;
  }
}
assert.ok(refused, "never rate limited");
const retryAfterMs = Number(refused.headers.get("retry-after-ms"));
assert.ok(retryAfterMs > 0 && retryAfterMs <= 2000, String(retryAfterMs));
console.log(`429 RateLimitError (retry-after-ms ${retryAfterMs}): ok`);

const retrying = new OpenAI({ baseURL, apiKey: process.env.RATE_KEY, maxRetries: 3 });
const started = performance.now();
const retried = await retrying.chat.completions.create({ model, messages: [{ role: "user", content: "hi" }], mock: { chunks: 2 } });
const waited = (performance.now() - started) / 1000;
assert.equal(retried.choices[0].message.content, expected(2));
// The budget refills after retry-after-ms (minus the moments since the 429): the SDK must have
// waited about that long and then succeeded.
assert.ok(waited >= retryAfterMs / 1000 - 0.15, `the SDK did not wait for retry-after (${waited.toFixed(2)}s < ${retryAfterMs}ms)`);
console.log(`429 retried by the SDK after ${waited.toFixed(2)}s: ok`);
console.log("node sdk: all ok");
