#!/usr/bin/env bash
# Runs the gateway in local workerd (wrangler dev) against the bundled mock inference backend.
# Usage: scripts/dev.sh GATEWAY_PORT MOCK_PORT DEV_KEY   (called by `make dev`)
set -euo pipefail
port=${1:-8787}; mock_port=${2:-8001}; key=${3:-sk-dev-local-gateway-key}
cd "$(dirname "$0")/.."

state=$(mktemp -d)
set -m # each background job gets its own process group, so one kill stops all it started
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target/debug/mock-backend --addr "127.0.0.1:$mock_port" --model mock-llama --chunk-delay-ms 50 >"$state/mock.log" 2>&1 &
pids+=($!)

key_sha=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
cat >"$state/dev.env" <<ENV
GATEWAY_BACKENDS='[{"name":"mock","url":"http://127.0.0.1:$mock_port","models":["mock-llama"]}]'
GATEWAY_API_KEYS='[{"id":"dev","sha256":"$key_sha","models":["*"],"requests_per_minute":600}]'
GATEWAY_CORS_ORIGINS='*'
ENV

node_modules/.bin/wrangler dev --ip 127.0.0.1 --port "$port" --inspector-port 0 \
  --show-interactive-dev-session=false --persist-to "$state/persist" --env-file "$state/dev.env" \
  >"$state/wrangler.log" 2>&1 &
pids+=($!)

# wrangler builds once, then rebuilds and restarts when its file watcher is ready: wait for
# "Ready on" (printed after that restart) and a healthy /healthz.
for _ in $(seq 1 360); do
  grep -q "Ready on" "$state/wrangler.log" 2>/dev/null &&
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
if ! curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
  echo "the gateway did not start; wrangler said:" >&2; tail -40 "$state/wrangler.log" >&2; exit 1
fi

cat <<MSG

Gateway running in local workerd at http://127.0.0.1:$port (mock backend on 127.0.0.1:$mock_port).
Point any OpenAI client at it:

export OPENAI_BASE_URL=http://127.0.0.1:$port/v1
export OPENAI_API_KEY=$key

curl -N \$OPENAI_BASE_URL/chat/completions -H "Authorization: Bearer \$OPENAI_API_KEY" \\
  -H 'content-type: application/json' \\
  -d '{"model":"mock-llama","stream":true,"messages":[{"role":"user","content":"Hello"}]}'

Logs: $state/wrangler.log   Ctrl-C stops both.
MSG
tail -n 0 -f "$state/wrangler.log" &
pids+=($!)
wait "${pids[1]}" # until wrangler exits or Ctrl-C
