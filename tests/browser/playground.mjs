// A real browser (Debian's Chromium, driven by playwright-core) against the gateway:
// the playground streams an answer chunk by chunk with a JWT, and CORS lets an allowed origin
// read the API while a page on another origin is refused.
// Env: GATEWAY_URL (no path), TOKEN (a JWT), MODEL, ALLOWED_PORT (an origin the gateway allows),
// CHROMIUM (default /usr/bin/chromium). Exits non-zero on any failure.
import assert from "node:assert/strict";
import http from "node:http";
import { chromium } from "playwright-core";

const gateway = process.env.GATEWAY_URL;
const token = process.env.TOKEN;
const model = process.env.MODEL;
const chunks = 6;
const expected = Array.from({ length: chunks }, (_, i) => `tok${i} `).join("");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  await playgroundStreams();
  await corsAllowsOnlyConfiguredOrigins();
  console.log("browser: all ok");
} finally {
  await browser.close();
}

async function playgroundStreams() {
  const page = await browser.newPage();
  const violations = [];
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); });
  // The page sends what any user would; the mock backend is told to pace its tokens.
  await page.route("**/v1/chat/completions", async (route) => {
    const body = JSON.parse(route.request().postData());
    await route.continue({ postData: JSON.stringify({ ...body, mock: { chunks, delay_ms: 250 } }) });
  });
  await page.goto(`${gateway}/`);
  await page.fill("#token", token);
  await page.click("#connect");
  await page.waitForSelector(`#model option[value="${model}"]`, { state: "attached", timeout: 10_000 });
  await page.selectOption("#model", model);
  await page.fill("#message", "Hello from a browser");
  await page.click("#send");
  // Watch the answer grow.
  const seen = [];
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const text = await page.textContent("#output");
    if (seen.at(-1) !== text) seen.push(text);
    if ((await page.textContent("#state")) === "done") break;
    await page.waitForTimeout(40);
  }
  assert.equal(await page.textContent("#state"), "done", `the stream did not finish; error: ${await page.textContent("#error")}`);
  // The last tokens and [DONE] may land between two polls: read the final text once more.
  const final = await page.textContent("#output");
  if (seen.at(-1) !== final) seen.push(final);
  assert.equal(seen.at(-1), expected);
  const growing = seen.filter((t) => t && expected.startsWith(t));
  assert.ok(growing.length >= 4, `the text did not grow chunk by chunk: ${JSON.stringify(seen)}`);
  assert.match(await page.textContent("#limits"), /tokens: \d+ of \d+ left/);
  assert.deepEqual(violations, []);
  console.log(`playground streamed ${growing.length} growing states: ok`);
  await page.close();
}

async function corsAllowsOnlyConfiguredOrigins() {
  // A page that calls the gateway from its own origin and reports what happened in its title.
  const html = `<!doctype html><script>
    fetch(${JSON.stringify(gateway)} + "/v1/models", { headers: { authorization: "Bearer ${token}" } })
      .then((r) => r.json()).then((b) => { document.title = "read " + b.data.length; })
      .catch(() => { document.title = "blocked"; });
  </script>`;
  const serve = (port) => new Promise((resolve) => {
    const server = http.createServer((_, res) => res.end(html)).listen(port, "127.0.0.1", () => resolve(server));
  });
  const allowed = await serve(Number(process.env.ALLOWED_PORT));
  const other = await serve(0);
  try {
    for (const [server, want] of [[allowed, /^read \d+$/], [other, /^blocked$/]]) {
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${server.address().port}/`);
      await page.waitForFunction(() => document.title !== "", null, { timeout: 10_000 });
      const title = await page.title();
      assert.match(title, want, `origin :${server.address().port}`);
      console.log(`cross-origin page on :${server.address().port}: ${title}: ok`);
      await page.close();
    }
  } finally {
    allowed.close();
    other.close();
  }
}
