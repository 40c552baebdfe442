#!/usr/bin/env bash
# Mutation runs: does breaking the model make a guide and the contract fail?
# Each mutation is applied to a fresh clone of HEAD; the zero-shot guide and the
# contract's SigLIP cases run under every backend. Every row should say FAILED twice.
#
#   integration_tests/mutations.sh                 # all mutations, all backends
#   MUTATIONS=converter_offset BACKENDS=torch integration_tests/mutations.sh
set -uo pipefail
export TF_CPP_MIN_LOG_LEVEL=3 OMP_NUM_THREADS=1
PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$ROOT" "$WORK/repo" && cd "$WORK/repo"

declare -A FILE=(
  [text_head_zeroed]=keras_siglip/layers/text.py
  [query_key_swapped]=keras_siglip/layers/vit.py
  [converter_offset]=keras_siglip/models/siglip/siglip_image_converter.py
)
declare -A FROM=(
  [text_head_zeroed]='return self.head(x) if self.head'
  [query_key_swapped]='        if _is_half(query.dtype) and keras.backend.backend() == "tensorflow":'
  [converter_offset]='            offset=offset,'
)
declare -A TO=(
  [text_head_zeroed]='return self.head(x * 0.0) if self.head'
  [query_key_swapped]='        if query.shape[1] == key.shape[1]:\n            query, key = key, query  # self-attention only\n        if _is_half(query.dtype) and keras.backend.backend() == "tensorflow":'
  [converter_offset]='            offset=offset + 0.5 if isinstance(offset, float) else offset,'
)
verdict() { [ "$1" -ne 0 ] && echo FAILED || echo "passed (mutation not caught)"; }

for mutation in ${MUTATIONS:-text_head_zeroed query_key_swapped converter_offset}; do
  git checkout -q -- .
  "$PYTHON" - "${FILE[$mutation]}" "${FROM[$mutation]}" "${TO[$mutation]}" <<'PY' || exit 1
import pathlib, sys
path, old, new = sys.argv[1:]
text = pathlib.Path(path).read_text()
assert text.count(old) == 1, f"{path}: the line to mutate is gone or repeated; update mutations.sh"
pathlib.Path(path).write_text(text.replace(old, new.replace("\\n", "\n")))
PY
  for backend in ${BACKENDS:-jax tensorflow torch}; do
    log="$WORK/$mutation.$backend"
    PYTHONPATH=. KERAS_BACKEND=$backend "$PYTHON" guides/zero_shot_and_retrieval.py > "$log.guide" 2>&1
    guide=$?
    PYTHONPATH=. KERAS_BACKEND=$backend "$PYTHON" -m pytest -p no:cacheprovider -n 0 -q tests/models/test_contract.py \
      -k "siglip_backbone or zero_shot or siglip_text_encoder or siglip_vision_encoder or image_classifier" > "$log.contract" 2>&1
    contract=$?
    echo "$mutation $backend: guide $(verdict $guide) ($(grep -m1 -o 'AssertionError.*' "$log.guide" | head -c 120)); contract $(verdict $contract) ($(tail -1 "$log.contract"))"
  done
done
