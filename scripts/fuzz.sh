#!/usr/bin/env bash
# Runs exo's fuzz targets (fuzz/fuzz_targets/*.rs, cargo fuzz with libFuzzer) for a given time each:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      default: 300 seconds, every target
#
# Needs the nightly toolchain (rustup toolchain install nightly --profile minimal), cargo-fuzz (cargo install
# cargo-fuzz --locked) and the test model, whose vocabulary and chat template the targets use
# (scripts/fetch-models.sh; EXO_FUZZ_MODEL names another GGUF file). Builds every target once (`cargo +nightly fuzz
# build`: optimized, with debug assertions, overflow checks and AddressSanitizer, into fuzz/target), then runs each
# on a working copy of its committed corpus: the seeds in fuzz/corpus/TARGET (written by fuzz/make_seeds.py) and
# every input that once crashed it, in fuzz/regressions/TARGET, which run first; with fuzz/dicts/TARGET.dict, the
# words of its input format, when there is one. The committed corpus never grows by itself. A slow input (over
# 10 s), a large allocation (over 2 GiB) and a large memory use (4 GiB) count as crashes, as panics do; leaks do
# not (a leak check after each new input would take half the time, scanning the vocabularies the targets hold).
#
# Prints, per target, the runs executed and whether it crashed, goes on through every target, and exits 1 when any
# crashed: the input is in fuzz/artifacts/TARGET/ (`cargo +nightly fuzz tmin TARGET FILE` minimizes it; put the
# minimized input in fuzz/regressions/TARGET/ once the crash is fixed).
#
# To keep what a long run found: EXO_FUZZ_KEEP=DIR keeps each target's working corpus in DIR/TARGET; then
#   cargo +nightly fuzz run TARGET fuzz/corpus/TARGET DIR/TARGET -- -merge=1
# adds to the committed corpus only the inputs that reach code it does not (`cargo +nightly fuzz cmin TARGET`
# shrinks it again, naming files by their hash). Keep the corpus small: a few KB per target.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-300}
shift || true
ALL=(peer_messages gguf_header tokenizer model_reference api_request)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
case $SECONDS_PER_TARGET in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...] (targets: ${ALL[*]})" >&2; exit 2 ;;
esac

# Largest input per target: peer messages and headers need room for lists; texts and bodies stay prompt-sized.
max_len() {
  case $1 in
    gguf_header) echo 65536 ;;
    peer_messages | api_request) echo 16384 ;;
    tokenizer) echo 8192 ;;
    *) echo 1024 ;;
  esac
}

[ -n "${EXO_FUZZ_MODEL:-}" ] || ./scripts/fetch-models.sh >/dev/null

cd fuzz
echo "building the fuzz targets (cargo +nightly fuzz build)"
started=$(date +%s)
cargo +nightly fuzz build
echo "built in $(($(date +%s) - started)) s"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tmp"
failed=()
summary=()
for target in "${TARGETS[@]}"; do
  corpus=$WORK/corpus/$target
  mkdir -p "$corpus" "artifacts/$target"
  cp corpus/"$target"/* "$corpus"/ 2>/dev/null || true
  regressions=()
  [ -d "regressions/$target" ] && regressions=("regressions/$target")
  dict=()
  [ -f "dicts/$target.dict" ] && dict=(-dict="dicts/$target.dict")
  log=$WORK/$target.log
  echo "fuzzing $target for $SECONDS_PER_TARGET s"
  rc=0
  # TMPDIR: the targets' model store lives there and goes with the working folder.
  TMPDIR=$WORK/tmp cargo +nightly fuzz run "$target" "$corpus" "${regressions[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 -malloc_limit_mb=2048 -detect_leaks=0 \
    -max_len="$(max_len "$target")" "${dict[@]}" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
  [ -n "$runs" ] || runs=0
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    line="$target: $runs runs (${rate:-?}/s), no crash"
  else
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    kind=$(grep -m1 -oE 'panicked at [^:]+:[0-9]+|ERROR: libFuzzer: [a-z-]+|ERROR: AddressSanitizer: [a-z-]+' "$log" || echo "exit $rc")
    line="$target: CRASH ($kind) after $runs runs: ${artifact:-no artifact, see the log below}"
    failed+=("$target")
    echo "---- $target: the end of libFuzzer's output ----"
    grep -v '^#[0-9]' "$log" | tail -40
    echo "----"
  fi
  echo "$line"
  summary+=("$line")
  if [ -n "${EXO_FUZZ_KEEP:-}" ]; then
    mkdir -p "$EXO_FUZZ_KEEP/$target"
    cp "$corpus"/* "$EXO_FUZZ_KEEP/$target"/ 2>/dev/null || true
  fi
done

echo
echo "fuzzing summary ($SECONDS_PER_TARGET s per target, $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
