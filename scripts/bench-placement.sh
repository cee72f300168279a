#!/usr/bin/env bash
# Decode tokens/s (tg64) of a two-node exo cluster on this machine whose nodes differ in speed: node n1 runs
# --threads 2, node n2 --threads 1. Each model is run twice on a fresh cluster: planned by memory alone (both
# nodes --calibrate false: they advertise no speed, so the layers split by memory, here evenly) and planned by
# speed (both nodes measure themselves at start, so the faster node takes the layers its memory holds). Prints a
# Markdown table of the two splits, their decode rates, the ratio speed ÷ memory, and the plan's predicted ms per
# token from /v1/topology. Not a test: it never fails on speed.
#
# The nodes are not pinned: with fewer than 3 cores, n1's two threads and n2's one share the cores (the script
# says so). A decode step runs the stages one after the other, so the nodes mostly take turns, but a node's pool
# threads spin briefly after each step and slow the other.
#
# usage: scripts/bench-placement.sh [MODEL.gguf ...]   (default: SmolLM2-135M Q4_1 and synthetic-1b Q8_0 from
#                                                       ~/.cache/exo/models)
#   EXO_BIN  exo binary (default: built here with cargo build --release -p exo, honouring CARGO_TARGET_DIR)
#   REPS     decode runs per split (default: 3); the best counts (STAT=median: the median)
#   MEMORY   --memory-limit of every node (default: 4G)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
MEMORY=${MEMORY:-4G}
STAT=${STAT:-max}
TG=64
case $STAT in max|median) ;; *) echo "error: STAT must be max or median" >&2; exit 1 ;; esac

if [ -z "${EXO_BIN:-}" ]; then
  cargo build --release -q -p exo
  EXO_BIN=${CARGO_TARGET_DIR:-target}/release/exo
fi
[ -x "$EXO_BIN" ] || { echo "error: no exo binary at $EXO_BIN" >&2; exit 1; }

models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=("$HOME/.cache/exo/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$HOME/.cache/exo/models/synthetic-1b.Q8_0.gguf")
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/exo-bench-placement.XXXXXX")
PIDS=()
cleanup() {
  stop_all
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$TMP/client.py" <<'PY'
import http.client, json, statistics, sys, time
from urllib.parse import urlsplit

def conn(api):
    u = urlsplit(api)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)

def get(api, path):
    c = conn(api); c.request("GET", path); r = c.getresponse(); body = r.read(); c.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: HTTP {r.status}: {body[:300]!r}")
    return json.loads(body)

def decode(api, model, max_tokens):
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
            "temperature": 1.0, "seed": 1, "top_k": 0, "top_p": 1.0, "min_p": 0}
    c = conn(api)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"POST /v1/completions: HTTP {r.status}: {r.read()[:300]!r}")
    times = []
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        ev = json.loads(line[5:])
        if "error" in ev:
            raise SystemExit(f"stream error: {ev['error']}")
        if any(ch.get("text") for ch in ev.get("choices") or []):
            times.append(time.perf_counter())
    c.close()
    if len(times) < 2:
        raise SystemExit(f"decode gave {len(times)} chunks")
    return (len(times) - 1) / (times[-1] - times[0])

api, model, reps, stat = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
deadline = time.time() + 30
while True:
    try:
        if len(get(api, "/v1/topology")["nodes"]) >= 2:
            break
    except (OSError, KeyError, ValueError):
        pass
    if time.time() > deadline:
        raise SystemExit("the two nodes did not meet within 30 s")
    time.sleep(0.2)
decode(api, model, 8)  # warm-up: the first request through a plan loads the layers
rates = [decode(api, model, 64) for _ in range(reps)]
topo = get(api, "/v1/topology")
plan = [p for p in topo["plans"] if p["model"] == model][-1]
speeds = {n["id"]: n["speed"]["matvec_bytes_per_s"] for n in topo["nodes"]}
print(json.dumps({"split": [[s["node_id"], s["end"] - s["start"] + 1] for s in plan["stages"]],
                  "by": plan["placement"]["by"], "predicted_ms": plan["placement"]["predicted_ms_per_token"],
                  "tg": max(rates) if stat == "max" else statistics.median(rates), "speeds": speeds}))
PY

# Starts node n$1 with --threads $2 and --calibrate $3 serving folder $4, joining $5 (or none); sets API, PEER.
start_node() {
  local k=$1 log="$TMP/node$1.log" line=""
  local args=(--discovery none --api-host 127.0.0.1 --api-port 0 --listen-port 0 --node-id "n$k"
    --models-dir "$4" --threads "$2" --calibrate "$3" --memory-limit "$MEMORY")
  [ -n "$5" ] && args+=(--peers "$5")
  mkdir -p "$TMP/home$k"
  EXO_HOME=$TMP/home$k "$EXO_BIN" "${args[@]}" >"$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    line=$(grep -m1 '^exo node .*OpenAI API on' "$log" || true)
    [ -n "$line" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "error: node n$k exited at start:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$line" ] || { echo "error: node n$k printed no start line in 30 s:" >&2; cat "$log" >&2; exit 1; }
  API=$(sed -E 's|.*OpenAI API on (http://[^ ]+)/v1,.*|\1|' <<<"$line")
  PEER=$(sed -E 's|.*peers on ([^ ]+) .*|\1|' <<<"$line")
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
  rm -rf "$TMP"/home*
}

echo "| model | planned by | split (node: layers) | predicted ms/token | decode tg64 t/s | ratio vs memory |"
echo "|---|---|---|---|---|---|"
for m in "${models[@]}"; do
  [ -f "$m" ] || { echo "error: no model file $m" >&2; exit 1; }
  dir=$(dirname "$m"); name=$(basename "$m" .gguf)
  base=""
  for calibrate in false true; do
    start_node 1 2 "$calibrate" "$dir" ""
    api=$API
    start_node 2 1 "$calibrate" "$dir" "$PEER"
    res=$(python3 "$TMP/client.py" "$api" "$name" "$REPS" "$STAT") || {
      echo "error: measuring $name failed; node logs:" >&2; cat "$TMP"/node*.log >&2; exit 1; }
    grep -h -E 'measured this machine|plan [0-9a-f]{16} for' "$TMP"/node*.log >>"$TMP/notes" || true
    stop_all
    row=$(python3 -c 'import json, sys
r = json.loads(sys.argv[1]); base = float(sys.argv[3]) if sys.argv[3] else None
threads = {"n1": 2, "n2": 1}
split = ", ".join("%s (--threads %d): %d" % (n, threads.get(n, 0), l) for n, l in r["split"])
pred = "–" if r["predicted_ms"] is None or r["by"] == "memory" else "%.2f" % r["predicted_ms"]
ratio = "1.00" if base is None else "%.2f" % (r["tg"] / base)
print("| %s | %s | %s | %s | %.1f | %s |" % (sys.argv[2], r["by"], split, pred, r["tg"], ratio))
print(r["tg"], file=sys.stderr)' "$res" "$name" "$base" 2>"$TMP/tg")
    echo "$row"
    [ -z "$base" ] && base=$(cat "$TMP/tg")
  done
done
echo
ncpu=$(nproc)
echo "Two nodes on this machine: n1 --threads 2, n2 --threads 1, --memory-limit $MEMORY each, unpinned;" \
  "$([ "$STAT" = max ] && echo best || echo median) of $REPS decode runs of $TG tokens after a warm-up."
if [ "$ncpu" -lt 3 ]; then
  echo "This machine has $ncpu cores: the nodes' 3 threads contend for them, so n1 runs slower than it would alone."
fi
echo
echo "What the nodes said (speed runs):"
sed 's/^/    /' "$TMP/notes"
