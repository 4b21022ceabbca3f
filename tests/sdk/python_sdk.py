"""The official OpenAI Python SDK, unmodified, against the gateway.

Run by the end-to-end suite with GATEWAY_URL (ending in /v1), KEY, RATE_KEY (60 requests per
minute, for this script alone) and MODEL in the environment. Exits non-zero on any failure.
With the argument `keep-alive`, runs only the long-prefill stream (see the end-to-end case).
"""
import os
import sys
import time

import openai
from openai import OpenAI

BASE_URL = os.environ["GATEWAY_URL"]
MODEL = os.environ["MODEL"]
client = OpenAI(base_url=BASE_URL, api_key=os.environ["KEY"], max_retries=0, timeout=30)


def expected(n):
    return "".join(f"tok{i} " for i in range(n))


if sys.argv[1:] == ["keep-alive"]:
    # A 7 s prefill: the gateway commits the stream first and sends `: keep-alive` comments
    # until the first token; the SDK must skip them and see only the chunks.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"mock": {"chunks": 3, "prefill_ms": 7000}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(3), text
    assert all(c.object == "chat.completion.chunk" for c in chunks), chunks
    print("keep-alive comments skipped: ok")
    sys.exit(0)

# Non-stream: a typed ChatCompletion with usage.
completion = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"mock": {"chunks": 4}}
)
assert completion.choices[0].message.content == expected(4), completion
assert completion.usage.completion_tokens == 4, completion.usage
print("non-stream: ok")

# Stream: the reassembled text equals what the backend sent; usage when asked for.
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"mock": {"chunks": 6}},
)
text, usage = "", None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert text == expected(6), text
assert usage is not None and usage.completion_tokens == 6, usage
print("stream: ok")

# Model lookup: the one model, and a typed 404 for one the key cannot use.
model = client.models.retrieve(MODEL)
assert model.id == MODEL and model.object == "model", model
try:
    client.models.retrieve("gpt-9")
    raise AssertionError("an unknown model was found")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", e
print("models.retrieve: ok")

# Embeddings: the SDK asks for base64 unless told otherwise and decodes it itself.
embeddings = client.embeddings.create(model=MODEL, input=["alpha", "beta"])
assert [len(d.embedding) for d in embeddings.data] == [8, 8], embeddings
assert embeddings.usage.prompt_tokens > 0, embeddings.usage
floats = client.embeddings.create(model=MODEL, input="alpha", encoding_format="float")
pairs = zip(floats.data[0].embedding, embeddings.data[0].embedding)
assert all(abs(a - b) < 1e-6 for a, b in pairs), "base64 and float agree (to float32's precision)"
print("embeddings: ok")

# Legacy completions: OpenAI's default of 16 tokens, and a stream.
legacy = client.completions.create(model=MODEL, prompt="Once upon a time", extra_body={"mock": {"chunks": 20}})
assert legacy.choices[0].text == expected(16) and legacy.usage.completion_tokens == 16, legacy
chunks = client.completions.create(model=MODEL, prompt="Once", max_tokens=3, stream=True)
assert "".join(c.choices[0].text for c in chunks if c.choices) == expected(3)
print("completions: ok")

# The Responses API, whole and streamed.
response = client.responses.create(model=MODEL, input="Say hello", extra_body={"mock": {"chunks": 2}})
assert response.output_text == expected(2) and response.usage.output_tokens == 2, response
events = list(client.responses.create(model=MODEL, input="Say hello", stream=True, extra_body={"mock": {"chunks": 3}}))
assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected(3)
assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == 3, events[-1]
# Stored state, with a key whose one model lives on one backend.
single = OpenAI(base_url=BASE_URL, api_key=os.environ["RATE_KEY"], max_retries=0)
stored = single.responses.create(model=MODEL, input="Remember 7", store=True, extra_body={"mock": {"chunks": 1}})
assert single.responses.retrieve(stored.id).id == stored.id
print("responses: ok")

# Typed errors.
try:
    OpenAI(base_url=BASE_URL, api_key="sk-wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e
print("401 AuthenticationError: ok")

try:
    client.chat.completions.create(model=MODEL, messages=[])
    raise AssertionError("empty messages were accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "messages", e
print("400 BadRequestError: ok")

# 429: spend the budget, see the typed error, then let the SDK retry after our retry-after.
limited = OpenAI(base_url=BASE_URL, api_key=os.environ["RATE_KEY"], max_retries=0)
for attempt in range(100):
    try:
        limited.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"mock": {"chunks": 1}})
    except openai.RateLimitError as e:
        assert e.status_code == 429 and e.code == "rate_limit_exceeded", e
        retry_after_ms = int(e.response.headers["retry-after-ms"])
        assert 0 < retry_after_ms <= 2000, retry_after_ms
        break
else:
    raise AssertionError("never rate limited")
print(f"429 RateLimitError after {attempt} requests (retry-after-ms {retry_after_ms}): ok")

retrying = OpenAI(base_url=BASE_URL, api_key=os.environ["RATE_KEY"], max_retries=3)
started = time.monotonic()
retried = retrying.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"mock": {"chunks": 2}})
waited = time.monotonic() - started
assert retried.choices[0].message.content == expected(2), retried
# The budget refills after retry-after-ms (minus the moments since the 429): the SDK must have
# waited about that long and then succeeded.
assert waited >= retry_after_ms / 1000 - 0.15, f"the SDK did not wait for retry-after ({waited:.2f}s < {retry_after_ms}ms)"
print(f"429 retried by the SDK after {waited:.2f}s: ok")
print("python sdk: all ok")
