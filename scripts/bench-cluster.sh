#!/usr/bin/env bash
# Prompt (pp128) and decode (tg64) tokens/s of an exo cluster of 1, 2 and 3 nodes on this machine, measured
# through node 1's OpenAI API, next to llama.cpp on the same layer split: llama-bench alone for 1 node, and
# llama-bench over ggml-rpc-server processes (one per node) for 2 and 3. Prints a Markdown table with the ratios
# exo ÷ llama.cpp, each engine's layer split, and the overhead of one hop of the ring.
#
# Settings: every node (and every RPC server) runs one thread, pinned with taskset to one core: node k (from 1) to
# core (k-1) mod the number of cores this script may use, so with more nodes than cores some share a core (said in
# the output). Every node offers the same --memory-limit, so the layers split evenly (largest remainder). Nodes
# run on 127.0.0.1 with --discovery none; nodes 2..n join with --peers <node 1's peer address>. Each cluster is
# fresh, gets a warm-up request (the first request through a plan loads the layers), and then REPS prompt runs
# (/v1/completions, max_tokens 1, temperature 0, a repeated sentence cut to exactly 128 prompt tokens) and REPS
# decode runs (stream, max_tokens 64, temperature 1 with seed 1 and no top-k/top-p/min-p cut, so EOS is unlikely
# before 64 tokens; timed from the first content chunk to the last: (tokens-1)/elapsed). Figures are the best
# (STAT=max, the default: other work on a shared machine only ever slows a run down) or the median (STAT=median)
# of the REPS runs, for exo and for llama-bench (its samples). Never fails on speed.
#
# Overhead per hop: with n nodes a token makes n hops (node to node, the last back to the first) and each node
# computes 1/n of the layers, so compute per token is about that of 1 node and
#   overhead per hop = (1/tg_n - 1/tg_1) / n.
#
# usage: scripts/bench-cluster.sh [MODEL.gguf ...]   (default: SmolLM2-135M Q4_1 and synthetic 1B-shape Q4_K_M)
#   EXO_BIN        exo binary (default: built here with cargo build --release -p exo, honouring CARGO_TARGET_DIR)
#   LLAMA_CPP_BIN  folder holding llama-bench and ggml-rpc-server (default: ~/.cache/llama.cpp-ref/llama.cpp/build/bin,
#                  built by ../shared/tools/build_llama_cpp.sh if missing)
#   NODES          cluster sizes (default: "1 2 3"; 1 is the baseline of the overhead figures)
#   REPS           measured runs per test (default: 3)
#   MEMORY         --memory-limit of every node (default: 4G)
#   STAT           max or median of the runs (default: max)
#   LLAMA_CPP      set to 0 to skip llama.cpp (default: 1)
#   KEYED          "0": open clusters; "1": clusters with a cluster key (TLS between nodes); "0 1" (the default):
#                  both, up at once (node k of each on the same core) and measured run by run in turn, so that a
#                  slow spell of the machine falls on both alike, and a table of what the key costs (llama.cpp
#                  runs once per size, after the exo clusters stop)
#   ROUNDS         how many times to measure, each time on fresh clusters (default: 1). On 2 cores a small model's
#                  figures vary by ±25% from one cluster start to the next, more than the key costs; the cost
#                  table then gives each round's ratios and their median
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-"1 2 3"}
REPS=${REPS:-3}
MEMORY=${MEMORY:-4G}
LLAMA_CPP=${LLAMA_CPP:-1}
STAT=${STAT:-max}
KEYED=${KEYED:-"0 1"}
ROUNDS=${ROUNDS:-1}
case $STAT in max|median) ;; *) echo "error: STAT must be max or median" >&2; exit 1 ;; esac
PP=128
TG=64

if [ -z "${LLAMA_CPP_BIN:-}" ] && [ "$LLAMA_CPP" != 0 ]; then
  LLAMA_CPP_BIN=$HOME/.cache/llama.cpp-ref/llama.cpp/build/bin
  if [ ! -x "$LLAMA_CPP_BIN/llama-bench" ] || [ ! -x "$LLAMA_CPP_BIN/ggml-rpc-server" ]; then
    for cand in ../shared/tools/build_llama_cpp.sh /work/shared/tools/build_llama_cpp.sh; do
      if [ -x "$cand" ]; then LLAMA_CPP_BIN=$("$cand"); break; fi
    done
  fi
fi
if [ "$LLAMA_CPP" != 0 ] && { [ ! -x "$LLAMA_CPP_BIN/llama-bench" ] || [ ! -x "$LLAMA_CPP_BIN/ggml-rpc-server" ]; }; then
  echo "error: set LLAMA_CPP_BIN to a folder holding llama-bench and ggml-rpc-server" \
    "(../shared/tools/build_llama_cpp.sh builds them), or LLAMA_CPP=0" >&2
  exit 1
fi
export LLAMA_CPP_BIN

if [ -z "${EXO_BIN:-}" ]; then
  cargo build --release -q -p exo
  EXO_BIN=${CARGO_TARGET_DIR:-target}/release/exo
fi
[ -x "$EXO_BIN" ] || { echo "error: no exo binary at $EXO_BIN" >&2; exit 1; }

models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  CACHE=$(./scripts/fetch-models.sh)
  models=("$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf" "$(./scripts/synth-model.sh 1b q4_k_m)")
fi

# The cores this script may use; node k (from 0) runs on CPUS[k mod ncpu].
read -r -a CPUS <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
NCPU=${#CPUS[@]}
core() { echo "${CPUS[$(($1 % NCPU))]}"; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/exo-bench-cluster.XXXXXX")
PIDS=()
FG=""
cleanup() {
  local p
  [ -n "$FG" ] && kill -TERM "$FG" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background and waits for it, so that a signal stops this script at once (bash runs traps
# only between foreground commands).
run_fg() {
  local rc=0
  "$@" &
  FG=$!
  wait "$FG" || rc=$?
  FG=""
  return "$rc"
}

# Stops the processes started since PIDS had $1 entries.
stop_from() {
  local keep=$1 p i
  for ((i = keep; i < ${#PIDS[@]}; i++)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  for ((i = keep; i < ${#PIDS[@]}; i++)); do
    p=${PIDS[$i]}
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "warning: process $p did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
  done
  PIDS=("${PIDS[@]:0:$keep}")
}

# The API client: waits for a cluster, fits the prompt to PP tokens, and measures. Python standard library only.
cat >"$TMP/client.py" <<'PY'
import http.client, json, statistics, sys, time
from urllib.parse import urlsplit

def conn(api):
    u = urlsplit(api)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)

def get(api, path):
    c = conn(api); c.request("GET", path); r = c.getresponse(); body = r.read(); c.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: HTTP {r.status}: {body[:500]!r}")
    return json.loads(body)

def post(api, path, body):
    c = conn(api)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close()
    if r.status != 200:
        raise SystemExit(f"POST {path}: HTTP {r.status}: {data[:500]!r}")
    return json.loads(data)

SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep in the morning sun."

def prompt_of(words):
    base = SENTENCE.split()
    return " ".join(base[i % len(base)] for i in range(words))

def pp_run(api, model, prompt):
    t0 = time.perf_counter()
    r = post(api, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0})
    dt = time.perf_counter() - t0
    return r["usage"]["prompt_tokens"], dt

def tg_run(api, model, max_tokens):
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 1.0, "seed": 1, "top_k": 0, "top_p": 1.0, "min_p": 0}
    c = conn(api)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"POST /v1/completions (stream): HTTP {r.status}: {r.read()[:500]!r}")
    times, usage, done = [], None, False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        ev = json.loads(data)
        if "error" in ev:
            raise SystemExit(f"stream error event: {ev['error']}")
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices") or []:
            if ch.get("text"):
                times.append(time.perf_counter())
    c.close()
    if not done:
        raise SystemExit("stream ended without data: [DONE]")
    n = usage["completion_tokens"] if usage else len(times)
    if len(times) < 2:
        raise SystemExit(f"decode run gave {len(times)} content chunks")
    return n, len(times), (n - 1) / (times[-1] - times[0])

def wait(api, n, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            t = get(api, "/v1/topology")
            if len(t["nodes"]) >= n:
                return
        except (OSError, KeyError, ValueError):
            pass
        if time.time() > deadline:
            raise SystemExit(f"{api}: the topology did not list {n} nodes within {timeout} s")
        time.sleep(0.2)

def fit(api, model, target, out):
    """Finds a number of words whose prompt is exactly `target` tokens (the last try if none is)."""
    words, seen = target * 3 // 4, {}
    for _ in range(12):
        p, _ = pp_run(api, model, prompt_of(words))
        seen[words] = p
        if p == target:
            break
        step = max(1, round((target - p) * 0.75))
        nxt = words + step if p < target else words - step
        if nxt in seen:  # oscillating by one word: creep
            nxt = words + (1 if p < target else -1)
            if nxt in seen:
                break
        words = nxt
    open(out, "w").write(prompt_of(words))
    print(f"prompt: {words} words, {seen[words]} tokens", file=sys.stderr)

def measure(apis, model, prompt_file, reps, tg, nodes):
    """Measures the clusters behind `apis` (comma-separated) in turn, run by run (one prompt run on each, then the
    next...), so that a slow spell of the machine falls on all of them alike; one JSON line per cluster."""
    apis = apis.split(",")
    prompt = open(prompt_file).read()
    before = []
    for api in apis:
        # Warm-up: the first request through a new plan loads the layers.
        pp_run(api, model, prompt)
        tg_run(api, model, 8)
        topo = get(api, "/v1/topology")
        plans = [p for p in topo.get("plans", []) if p.get("model") in (model, model + ".gguf")]
        before.append((topo, plans))
    pps, tgs, ntoks = [[] for _ in apis], [[] for _ in apis], [[] for _ in apis]
    ptoks = [None for _ in apis]
    for _ in range(reps):
        for i, api in enumerate(apis):
            ptoks[i], dt = pp_run(api, model, prompt)
            pps[i].append(ptoks[i] / dt)
    for _ in range(reps):
        for i, api in enumerate(apis):
            n, chunks, rate = tg_run(api, model, tg)
            tgs[i].append(rate); ntoks[i].append([n, chunks])
    time.sleep(2.5)  # idle for two heartbeats, so the links' round-trip times are those of an idle ring
    for i, api in enumerate(apis):
        topo, plans = before[i]
        split = [[s["node_id"], s["start"], s["end"]] for s in plans[-1]["stages"]] if plans else []
        node_layers = {n["id"]: (n["model"]["layers"] if n.get("model") else None) for n in topo["nodes"]}
        topo2 = get(api, "/v1/topology")
        rtt = {n["id"]: n["link"]["rtt_ms"] for n in topo2["nodes"] if n.get("link") and n["link"].get("rtt_ms") is not None}
        plans2 = [p for p in topo2.get("plans", []) if p.get("model") in (model, model + ".gguf")]
        split2 = [[s["node_id"], s["start"], s["end"]] for s in plans2[-1]["stages"]] if plans2 else []
        print(json.dumps({"nodes": nodes, "n_topology": len(topo["nodes"]), "split": split, "split_after": split2,
                          "node_layers": node_layers, "n_layers": plans[-1]["n_layers"] if plans else None,
                          "prompt_tokens": ptoks[i], "rtt_ms": rtt, "pp": pps[i], "tg": tgs[i], "tg_tokens": ntoks[i]}))

cmd = sys.argv[1]
if cmd == "wait":
    wait(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
elif cmd == "fit":
    fit(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
elif cmd == "measure":
    measure(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
PY

# Starts node $1 (from 1) of a cluster serving the models in folder $2, joining peer $3 (or none), with the cluster
# key $KEY (or none), and waits for its start line; sets API and PEER. Its id is $4$1 (prefix $4, default n).
start_node() {
  local k=$1 dir=$2 peers=$3 id=${4:-n}$1 line=""
  local log="$TMP/node-$id.log"
  mkdir -p "$TMP/home-$id"
  local args=(--discovery none --api-host 127.0.0.1 --api-port 0 --listen-port 0 --node-id "$id"
    --models-dir "$dir" --threads 1 --memory-limit "$MEMORY")
  [ -n "$peers" ] && args+=(--peers "$peers")
  [ "$KEY" != "" ] && args+=(--cluster-key "$KEY")
  : >"$log"
  EXO_HOME=$TMP/home-$id taskset -c "$(core $((k - 1)))" "$EXO_BIN" "${args[@]}" >"$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    line=$(grep -m1 '^exo node .*OpenAI API on' "$log" || true)
    [ -n "$line" ] && break
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
      echo "error: node $id exited at start:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.1
  done
  [ -n "$line" ] || { echo "error: node $id printed no start line in 30 s:" >&2; cat "$log" >&2; exit 1; }
  API=$(sed -E 's|.*OpenAI API on (http://[^ ]+)/v1,.*|\1|' <<<"$line")
  PEER=$(sed -E 's|.*peers on ([^ ]+) .*|\1|' <<<"$line")
}

# Runs llama-bench pinned to core 0 with the extra flags given; its JSON goes to $1, its stderr to $1.err.
llama_bench() {
  local out=$1; shift
  run_fg taskset -c "$(core 0)" "$LLAMA_CPP_BIN/llama-bench" -t 1 -p "$PP" -n "$TG" -r "$REPS" -o json "$@" \
    >"$out" 2>"$out.err" || { echo "error: llama-bench failed:" >&2; tail -n 20 "$out.err" >&2; exit 1; }
}

RESULTS=$TMP/results.jsonl
: >"$RESULTS"
for m in "${models[@]}"; do
  [ -f "$m" ] || { echo "error: no model file $m" >&2; exit 1; }
  dir=$(dirname "$m"); name=$(basename "$m" .gguf)
  prompt=$TMP/$name.prompt
  for n in $NODES; do
   for round in $(seq "$ROUNDS"); do
    # Both kinds at once when both are asked for: an open cluster (nodes n1..) and a keyed one (k1..), node k of
    # each on the same core, measured run by run in turn (the idle one only sends heartbeats).
    keep=${#PIDS[@]}
    apis=(); kinds=()
    for keyed in $KEYED; do
      KEY=""; prefix=n
      [ "$keyed" = 1 ] && KEY=$("$EXO_BIN" cluster-key) && prefix=k
      start_node 1 "$dir" "" "$prefix"
      api=$API; peer1=$PEER
      for ((k = 2; k <= n; k++)); do start_node "$k" "$dir" "$peer1" "$prefix"; done
      run_fg python3 "$TMP/client.py" wait "$api" "$n" 30
      apis+=("$api"); kinds+=("$keyed")
    done
    [ -f "$prompt" ] || run_fg python3 "$TMP/client.py" fit "${apis[0]}" "$name" "$PP" "$prompt"
    run_fg python3 "$TMP/client.py" measure "$(IFS=,; echo "${apis[*]}")" "$name" "$prompt" "$REPS" "$TG" "$n" \
      >"$TMP/res.json" || {
      echo "error: measuring $name on $n nodes failed; node logs:" >&2
      for f in "$TMP"/node-*.log; do echo "--- $f" >&2; cat "$f" >&2; done
      exit 1
    }
    for ((i = keep; i < ${#PIDS[@]}; i++)); do
      if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        echo "error: a node died during the run; node logs:" >&2
        for f in "$TMP"/node-*.log; do echo "--- $f" >&2; cat "$f" >&2; done
        exit 1
      fi
    done
    # What each node said it loaded ("node nK: layers A-B of L"), read before the nodes stop.
    declare -A loaded=()
    for prefix in n k; do
      loaded[$prefix]=$(cat "$TMP"/node-"$prefix"*.log 2>/dev/null | grep -E "^node $prefix[0-9]+: layers" || true)
    done
    stop_from "$keep"
    rm -rf "$TMP"/home-* "$TMP"/node-*.log
    i=0
    for keyed in "${kinds[@]}"; do
      i=$((i + 1))
      prefix=n; [ "$keyed" = 1 ] && prefix=k
      res=$(sed -n "${i}p" "$TMP/res.json")
      loglines=${loaded[$prefix]}
    ref='null'; ref_split='[]'
    if [ "$LLAMA_CPP" != 0 ] && [ "$keyed" = "${KEYED%% *}" ] && [ "$round" = 1 ]; then
      if [ "$n" = 1 ]; then
        llama_bench "$TMP/ref.json" -m "$m"
      else
        # One RPC server per node, pinned like the nodes, and a tensor split equal to exo's: llama.cpp counts the
        # output layer as one more unit on the last device, so the last share gets +1.
        rpc=()
        for ((k = 0; k < n; k++)); do
          port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
          taskset -c "$(core "$k")" "$LLAMA_CPP_BIN/ggml-rpc-server" -H 127.0.0.1 -p "$port" -t 1 \
            >"$TMP/rpc$k.log" 2>&1 &
          PIDS+=($!)
          rpc+=("127.0.0.1:$port")
        done
        for a in "${rpc[@]}"; do
          for _ in $(seq 100); do (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null && break; sleep 0.1; done
        done
        ts=$(python3 -c 'import json, sys
s = json.loads(sys.argv[1])["split"]
sizes = [e - b + 1 for _, b, e in s]; sizes[-1] += 1
print("/".join(map(str, sizes)))' "$res")
        llama_bench "$TMP/ref.json" -m "$m" --rpc "$(IFS=,; echo "${rpc[*]}")" -ngl 99 -ts "$ts" -v
        stop_from "$keep"
        # The layers each RPC device got, from llama-bench's verbose log (the output layer is the last one).
        ref_split=$(python3 -c 'import json, re, sys
got = {}
for layer, dev in re.findall(r"layer +(\d+) assigned to device (\S+?),", open(sys.argv[1]).read()):
    got.setdefault(dev, set()).add(int(layer))
print(json.dumps([[d, min(l), max(l)] for d, l in sorted(got.items())]))' "$TMP/ref.json.err")
      fi
      ref=$(cat "$TMP/ref.json")
    fi
    python3 -c 'import json, sys
r = json.loads(sys.argv[1]); r["model"] = sys.argv[2]; r["ref"] = json.loads(sys.argv[3])
r["ref_split"] = json.loads(sys.argv[4]); r["log_layers"] = sys.argv[5].splitlines()
r["cores"] = sys.argv[6].split(); r["keyed"] = sys.argv[7] == "1"; r["round"] = int(sys.argv[8])
print(json.dumps(r))' "$res" "$name" "$ref" "$ref_split" "$loglines" \
      "$(for ((k = 0; k < n; k++)); do core "$k"; done)" "$keyed" "$round" >>"$RESULTS"
    done
   done
  done
done

python3 - "$RESULTS" "$NCPU" "$MEMORY" "$REPS" "$STAT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ncpu, memory, reps, stat = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
pick = max if stat == "max" else statistics.median
def ref_rates(r):
    if not r["ref"]:
        return None, None
    pp = next(pick(x["samples_ts"]) for x in r["ref"] if x["n_prompt"] > 0 and x["n_gen"] == 0)
    tg = next(pick(x["samples_ts"]) for x in r["ref"] if x["n_gen"] > 0 and x["n_prompt"] == 0)
    return pp, tg
f = lambda x: "–" if x is None else f"{x:.1f}"
ratio = lambda a, b: "–" if b is None else f"{a / b:.2f}"
rounds = max(r["round"] for r in rows) if rows else 1
print(f"| model | nodes | cluster | exo pp{128} t/s | exo tg{64} t/s | llama.cpp pp128 | llama.cpp tg64 | ratio pp | ratio tg |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    pp, tg = pick(r["pp"]), pick(r["tg"])
    rpp, rtg = ref_rates(r)
    kind = "keyed (TLS)" if r.get("keyed") else "open"
    if rounds > 1:
        kind += f", round {r['round']}"
    print(f"| {r['model']} | {r['nodes']} | {kind} | {pp:.1f} | {tg:.1f} | {f(rpp)} | {f(rtg)} | {ratio(pp, rpp)} | {ratio(tg, rtg)} |")
print()
same = lambda o, k: (o["model"], o["nodes"], o["round"]) == (k["model"], k["nodes"], k["round"])
pairs = [(o, k) for o in rows for k in rows if not o.get("keyed") and k.get("keyed") and same(o, k)]
if pairs:
    print("What the cluster key costs (keyed ÷ open, same model and nodes, measured run by run in turn):")
    print()
    print("| model | nodes | round | open pp128 | keyed pp128 | ratio | open tg64 | keyed tg64 | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for o, k in pairs:
        opp, kpp, otg, ktg = pick(o["pp"]), pick(k["pp"]), pick(o["tg"]), pick(k["tg"])
        print(f"| {o['model']} | {o['nodes']} | {o['round']} | {opp:.1f} | {kpp:.1f} | {kpp / opp:.3f} | {otg:.1f} | {ktg:.1f} | {ktg / otg:.3f} |")
    if rounds > 1:
        med = statistics.median
        for key in dict.fromkeys((o["model"], o["nodes"]) for o, _ in pairs):
            ps = [(o, k) for o, k in pairs if (o["model"], o["nodes"]) == key]
            rpp = med(pick(k["pp"]) / pick(o["pp"]) for o, k in ps)
            rtg = med(pick(k["tg"]) / pick(o["tg"]) for o, k in ps)
            print(f"| {key[0]} | {key[1]} | median of {len(ps)} | {med(pick(o['pp']) for o, _ in ps):.1f} | "
                  f"{med(pick(k['pp']) for _, k in ps):.1f} | {rpp:.3f} | {med(pick(o['tg']) for o, _ in ps):.1f} | "
                  f"{med(pick(k['tg']) for _, k in ps):.1f} | {rtg:.3f} |")
    print()
print(f"{'Best' if stat == 'max' else 'Medians'} of {reps} runs after a warm-up; one thread per node (and per llama.cpp RPC server), node k pinned to "
      f"core (k-1) mod {ncpu}; --memory-limit {memory} on every node."
      + (" llama.cpp: 1 node is llama-bench -t 1 alone; n nodes is llama-bench -ngl 99 -ts (exo's split) over n "
         "ggml-rpc-server -t 1, pinned like the nodes, llama-bench on core 0." if any(r["ref"] for r in rows) else ""))
shared = sorted({r["nodes"] for r in rows if len(set(r["cores"])) < len(r["cores"])})
if shared:
    print(f"With {', '.join(map(str, shared))} nodes on {ncpu} cores, nodes share cores (cores per node: "
          + "; ".join(f"{r['nodes']} nodes: {' '.join(r['cores'])}" for r in rows if r["nodes"] in shared
                      and r is next(x for x in rows if x["nodes"] == r["nodes"])) + ").")
print()
for r in rows:
    if r["round"] > 1 or (r.get("keyed") and any(not o.get("keyed") and same(o, r) for o in rows)):
        continue
    sp = ", ".join(f"{i} {b}-{e}" for i, b, e in r["split"])
    line = f"- {r['model']}, {r['nodes']} node(s): exo split {sp} of {r['n_layers']}"
    if r["ref_split"]:
        line += "; llama.cpp split " + ", ".join(f"{d} {b}-{e}" for d, b, e in r["ref_split"]) + " (last = output)"
    if r["rtt_ms"]:
        line += "; idle heartbeat RTT from n1: " + ", ".join(f"{i} {v:.2f} ms" for i, v in sorted(r["rtt_ms"].items()))
    if r["prompt_tokens"] != 128:
        line += f"; prompt {r['prompt_tokens']} tokens"
    short = [n for n, _ in r["tg_tokens"] if n != 64]
    if short:
        line += f"; decode stopped early at {short} tokens"
    if r["split_after"] != r["split"]:
        line += f"; PLAN CHANGED during the runs to {r['split_after']}"
    # The even split the memory limits call for: largest remainder, extras to the first nodes in ring order.
    L, n = r["n_layers"], r["nodes"]
    if L:
        want = [L // n + (1 if i < L % n else 0) for i in range(n)]
        got = [e - b + 1 for _, b, e in r["split"]]
        if got != want:
            line += f"; SPLIT {got} differs from the even split {want}"
    # What the nodes said they loaded ("node nK: layers A-B of L") should be the plan.
    logged = sorted(l.split(": layers ")[0][5:] + " " + l.split(": layers ")[1].split(" of ")[0].replace("-", " ")
                    for l in r["log_layers"])
    planned = sorted(f"{i} {b} {e}" for i, b, e in r["split"])
    if logged != planned:
        line += f"; NODE LOGS SAY {r['log_layers']}"
    if r["n_topology"] != r["nodes"]:
        line += f"; topology listed {r['n_topology']} nodes"
    print(line)
print()
by = {}
for r in rows:
    if r["round"] > 1 or (r.get("keyed") and any(not o.get("keyed") for o in rows)):
        continue
    by.setdefault(r["model"], {})[r["nodes"]] = r
for model, rs in by.items():
    if 1 not in rs:
        continue
    tg1 = pick(rs[1]["tg"]); rtg1 = ref_rates(rs[1])[1]
    for n in sorted(k for k in rs if k > 1):
        tgn = pick(rs[n]["tg"])
        hop = (1 / tgn - 1 / tg1) / n * 1e6
        line = f"{model}, {n} nodes: exo overhead per hop ≈ {hop:.0f} µs ((1/tg{n} − 1/tg1)/{n}, tg1 {tg1:.1f}, tg{n} {tgn:.1f} t/s)"
        rtgn = ref_rates(rs[n])[1]
        if rtg1 and rtgn:
            line += f"; llama.cpp RPC, same formula: {(1 / rtgn - 1 / rtg1) / n * 1e6:.0f} µs"
        print(line)
PY
