// CPU profile of a worker under load, through workerd's inspector (V8's sampling profiler).
// Usage: node --experimental-websocket benches/profile.mjs INSPECTOR_PORT SECONDS
// Prints the functions with the most self time (JS and wasm, by name), as a share of all samples.
const [port, seconds] = [process.argv[2], Number(process.argv[3] ?? 5)];
const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const target = targets.find((t) => t.webSocketDebuggerUrl) ?? targets[0];
const socket = new WebSocket(target.webSocketDebuggerUrl ?? `ws://127.0.0.1:${port}/${target.id}`);
await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = reject; });
let id = 0;
const pending = new Map();
socket.onmessage = (message) => {
  const data = JSON.parse(message.data);
  if (data.id && pending.has(data.id)) {
    pending.get(data.id)(data);
    pending.delete(data.id);
  }
};
const call = (method, params = {}) => new Promise((resolve) => {
  const n = ++id;
  pending.set(n, resolve);
  socket.send(JSON.stringify({ id: n, method, params }));
});
await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });
await call("Profiler.start");
console.error(`profiling for ${seconds}s`);
await new Promise((r) => setTimeout(r, seconds * 1000));
const { result } = await call("Profiler.stop");
socket.close();
const profile = result.profile;
const byNode = new Map(profile.nodes.map((n) => [n.id, n]));
const selfSamples = new Map();
for (const sample of profile.samples) {
  const node = byNode.get(sample);
  const frame = node.callFrame;
  const name = `${frame.functionName || "(anonymous)"}${frame.url ? ` [${frame.url.split("/").pop()}]` : ""}`;
  selfSamples.set(name, (selfSamples.get(name) ?? 0) + 1);
}
const total = profile.samples.length;
const idle = (selfSamples.get("(idle)") ?? 0);
console.log(`${total} samples, ${(100 * idle / total).toFixed(1)}% idle; self time of the busy samples:`);
const busy = total - idle;
[...selfSamples.entries()].filter(([n]) => n !== "(idle)").sort((a, b) => b[1] - a[1]).slice(0, 40)
  .forEach(([name, n]) => console.log(`${(100 * n / busy).toFixed(1).padStart(5)}%  ${name}`));
