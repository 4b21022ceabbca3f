#!/usr/bin/env bash
# Starts llama-cpp-python's OpenAI server (from .venv-real, see `make real-tool`) on the
# tiny random-weight GGUF that scripts/tiny_gguf.py writes, for tests against a real
# inference server. tests/support/real_backend.rs runs this; by hand:
#
#   scripts/real_backend.sh PORT API_KEY
#
# The server runs in the foreground (exec) on 127.0.0.1:PORT; its model id is
# `target/real-backend/tiny.gguf` (the path it was given, relative to the repository).
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 PORT API_KEY" >&2
	exit 2
fi
port=$1
api_key=$2
root=$(cd "$(dirname "$0")/.." && pwd)
python="$root/.venv-real/bin/python"
model=target/real-backend/tiny.gguf

# Exit 3 (the Rust helper's cue to say what to run) until `make real-tool` has finished.
if ! compgen -G "$root/.venv-real/lib/python3*/site-packages/llama_cpp/server/__main__.py" \
	>/dev/null; then
	echo "$0: llama-cpp-python is not installed in .venv-real: run \`make test-real\`" \
		"(or \`make real-tool\`) first" >&2
	exit 3
fi
cd "$root"
if [ ! -s "$model" ]; then
	mkdir -p "$(dirname "$model")"
	# Written aside and renamed, so servers starting together never read half a file.
	tmp="$model.$$.tmp"
	"$python" scripts/tiny_gguf.py "$tmp"
	mv -f "$tmp" "$model"
fi
exec "$python" -m llama_cpp.server --model "$model" --n_ctx 256 --api_key "$api_key" \
	--host 127.0.0.1 --port "$port"
