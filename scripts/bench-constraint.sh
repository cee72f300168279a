#!/usr/bin/env bash
# Decode tokens/s of one exo node with and without a grammar constraint (a JSON schema in response_format), from
# one run, measured through the node's OpenAI API, and what the constraint costs per token.
#
# The node runs on 127.0.0.1 (--discovery none, --threads THREADS). After a warm-up of each kind, REPS pairs of
# runs alternate (plain, constrained, plain, ...) so that a slow spell of the machine falls on both alike. Each run
# is one streamed chat completion of max_tokens TG at temperature 1, seed 1 and the default cuts (top-k 40, top-p
# 0.95, min-p 0.05, as llama-server), timed from the first content chunk to the last: (tokens-1)/elapsed. (With no
# cut at all, sampling from the whole vocabulary costs more than the constraint does on a large vocabulary such as
# Gemma's 262,144 tokens, and the constrained run, whose mask leaves few candidates, comes out faster.) The constrained run's schema is an object holding an
# array of at least 40 {name, age} objects, so it cannot end within TG tokens, and it mixes forced tokens (keys,
# punctuation) with free ones (names, digits). Figures are the best (STAT=max, the default: other work only ever
# slows a run down) or the median (STAT=median) of the REPS runs. Never fails on speed.
#
# usage: scripts/bench-constraint.sh [MODEL.gguf ...]   (default: SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M)
#   EXO_BIN   exo binary (default: built here with cargo build --release -p exo, honouring CARGO_TARGET_DIR)
#   THREADS   the node's --threads (default: 2)
#   REPS      measured runs of each kind (default: 5)
#   TG        tokens per run (default: 64)
#   STAT      max or median of the runs (default: max)
#   TEMP      the sampling temperature (default: 1; 0 is greedy, where sampling costs the least)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2} REPS=${REPS:-5} TG=${TG:-64} STAT=${STAT:-max} TEMP=${TEMP:-1}
MODELS=~/.cache/exo/models
[ $# -gt 0 ] || set -- SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf
./scripts/fetch-models.sh >/dev/null
if [ -z "${EXO_BIN:-}" ]; then
  cargo build -q --release -p exo
  EXO_BIN=${CARGO_TARGET_DIR:-target}/release/exo
fi
TMP=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$TMP"' EXIT

echo "| model | threads | tg$TG plain (t/s) | tg$TG with a JSON schema (t/s) | constrained ÷ plain | cost per token (ms) |"
echo "|---|---:|---:|---:|---:|---:|"
for m in "$@"; do
  [ -f "$MODELS/$m" ] || { echo "error: no $MODELS/$m" >&2; exit 1; }
  mkdir -p "$TMP/models" && ln -sf "$MODELS/$m" "$TMP/models/$m"
  : >"$TMP/node.log"
  EXO_HOME=$TMP/home "$EXO_BIN" --discovery none --api-host 127.0.0.1 --api-port 0 --listen-port 0 \
    --models-dir "$TMP/models" --threads "$THREADS" >"$TMP/node.log" 2>&1 &
  PID=$!
  line=""
  for _ in $(seq 300); do
    line=$(grep -m1 '^exo node .*OpenAI API on' "$TMP/node.log" || true)
    [ -n "$line" ] && break
    kill -0 "$PID" 2>/dev/null || { echo "error: the node exited at start:" >&2; cat "$TMP/node.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$line" ] || { echo "error: the node printed no start line in 30 s:" >&2; cat "$TMP/node.log" >&2; exit 1; }
  API=$(sed -E 's|.*OpenAI API on (http://[^ ]+)/v1,.*|\1|' <<<"$line")
  python3 - "$API" "${m%.gguf}" "$THREADS" "$REPS" "$TG" "$STAT" "$TEMP" <<'PY'
import http.client, json, statistics, sys, time
from urllib.parse import urlsplit

api, model, threads, reps, tg, stat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
temperature = float(sys.argv[7])
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "minItems": 40, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                     "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"], "additionalProperties": False}}},
    "required": ["people"], "additionalProperties": False}

def run(constrained):
    body = {"model": model, "max_tokens": tg, "stream": True, "stream_options": {"include_usage": True},
            "temperature": temperature, "seed": 1,
            "messages": [{"role": "user", "content": "List forty people and their ages as JSON."}]}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}
    u = urlsplit(api)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {r.read()[:500]!r}")
    times, usage = [], None
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        ev = json.loads(line[5:])
        if "error" in ev:
            raise SystemExit(f"stream error event: {ev['error']}")
        usage = ev.get("usage") or usage
        if any((ch.get("delta") or {}).get("content") for ch in ev.get("choices") or []):
            times.append(time.perf_counter())
    c.close()
    n = usage["completion_tokens"] if usage else len(times)
    if n < tg or len(times) < 2:
        raise SystemExit(f"a {'constrained' if constrained else 'plain'} run ended after {n} of {tg} tokens")
    return (n - 1) / (times[-1] - times[0])

run(False), run(True)  # warm-up: the first request loads the layers, the first constraint builds the vocabulary
plain, constrained = [], []
for _ in range(reps):
    plain.append(run(False))
    constrained.append(run(True))
pick = max if stat == "max" else statistics.median
p, c = pick(plain), pick(constrained)
print(f"| {model} | {threads} | {p:.1f} | {c:.1f} | {c / p:.2f} | {1000 / c - 1000 / p:+.2f} |", flush=True)
PY
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
  rm -f "$TMP/models/$m"
done
