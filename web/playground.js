"use strict";
// The playground: load the models a key may use, then stream a chat answer as it arrives.
// Same-origin only (the page's CSP allows nothing else); the credential lives in memory.

const $ = (id) => document.getElementById(id);
let credential = "";

const headers = () => ({ authorization: `Bearer ${credential}`, "content-type": "application/json" });

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function showLimits(response) {
  const parts = [];
  for (const kind of ["requests", "tokens"]) {
    const remaining = response.headers.get(`x-ratelimit-remaining-${kind}`);
    if (remaining === null) continue;
    const limit = response.headers.get(`x-ratelimit-limit-${kind}`);
    const reset = response.headers.get(`x-ratelimit-reset-${kind}`);
    parts.push(`${kind}: ${remaining} of ${limit} left (full in ${reset})`);
  }
  const retry = response.headers.get("retry-after");
  if (retry !== null) parts.push(`retry in ${retry}s`);
  $("limits").textContent = parts.length ? `Rate limits: ${parts.join(" · ")}` : "";
}

$("auth").addEventListener("submit", async (event) => {
  event.preventDefault();
  credential = $("token").value.trim();
  $("error").textContent = "";
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("error").textContent = await errorMessage(response);
    return;
  }
  const models = (await response.json()).data.map((m) => m.id);
  $("model").replaceChildren(...models.map((id) => new Option(id, id)));
  $("send").disabled = models.length === 0;
  if (models.length === 0) $("error").textContent = "This key may not use any model.";
});

$("chat").addEventListener("submit", async (event) => {
  event.preventDefault();
  const output = $("output");
  output.textContent = "";
  $("error").textContent = "";
  $("state").textContent = "waiting…";
  $("send").disabled = true;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        model: $("model").value,
        stream: true,
        messages: [{ role: "user", content: $("message").value }],
      }),
    });
    showLimits(response);
    if (!response.ok) {
      $("error").textContent = await errorMessage(response);
      $("state").textContent = "";
      return;
    }
    $("state").textContent = "streaming…";
    await readEvents(response.body, (data) => {
      if (data === "[DONE]") {
        $("state").textContent = "done";
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        $("error").textContent = chunk.error.message;
        $("state").textContent = "failed";
        return;
      }
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) output.textContent += delta;
    });
  } catch (error) {
    $("error").textContent = String(error);
    $("state").textContent = "failed";
  } finally {
    $("send").disabled = false;
  }
});

// Calls `onData` with each SSE `data:` payload as soon as its event is complete.
async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data:")) onData(line.slice(5).trim());
      }
    }
  }
}
