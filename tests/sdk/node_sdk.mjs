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

const card = await client.models.retrieve(model);
assert.equal(card.id, model);
await assert.rejects(
  client.models.retrieve("gpt-9"),
  (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found",
);
console.log("models.retrieve: ok");

// The SDK asks for base64 unless told otherwise and decodes it itself.
const embeddings = await client.embeddings.create({ model, input: ["alpha", "beta"] });
assert.deepEqual(embeddings.data.map((d) => d.embedding.length), [8, 8]);
const floats = await client.embeddings.create({ model, input: "alpha", encoding_format: "float" });
assert.deepEqual(
  floats.data[0].embedding.map((x) => Math.fround(x)),
  embeddings.data[0].embedding.map((x) => Math.fround(x)),
);
console.log("embeddings: ok");

const legacy = await client.completions.create({ model, prompt: "Once upon a time", mock: { chunks: 20 } });
assert.equal(legacy.choices[0].text, expected(16));
let legacyText = "";
for await (const chunk of await client.completions.create({ model, prompt: "Once", max_tokens: 3, stream: true })) {
  legacyText += chunk.choices[0]?.text ?? "";
}
assert.equal(legacyText, expected(3));
console.log("completions: ok");

const response = await client.responses.create({ model, input: "Say hello", mock: { chunks: 2 } });
assert.equal(response.output_text, expected(2));
let responseText = "";
let last = null;
for await (const event of await client.responses.create({ model, input: "Say hello", stream: true, mock: { chunks: 3 } })) {
  if (event.type === "response.output_text.delta") responseText += event.delta;
  last = event;
}
assert.equal(responseText, expected(3));
assert.equal(last.type, "response.completed");
assert.equal(last.response.usage.output_tokens, 3);
const single = new OpenAI({ baseURL, apiKey: process.env.RATE_KEY, maxRetries: 0 });
const stored = await single.responses.create({ model, input: "Remember 7", store: true, mock: { chunks: 1 } });
assert.equal((await single.responses.retrieve(stored.id)).id, stored.id);
console.log("responses: ok");

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
