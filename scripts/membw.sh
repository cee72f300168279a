#!/usr/bin/env bash
# Measures this machine's memory read bandwidth (scripts/membw.c) with 1 and 2 threads, or those given.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${TMPDIR:-/tmp}/exo-membw
gcc -O3 -march=native -pthread -o "$out" scripts/membw.c
for t in ${@:-1 2}; do "$out" "$t"; done
