#!/usr/bin/env bash
# The first answer after loading a corpus, Omnibus against the plain transformers generate() (the seed's code),
# side by side on one GPU: each Omnibus length in a fresh process (model load and any compile counted), then
# the plain path in one process. JSON rows go to $OUT (or ./out).
#
#     bash bench/first_answer.sh 32768 131072 262144
#     ATTENTIONS="bf16 fp8" bash bench/first_answer.sh 131072 262144    # each length with each attention setting
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out}
mkdir -p "$out"
lengths=("$@")
for attention in ${ATTENTIONS:-bf16}; do
  for n in "${lengths[@]}"; do
    python3 bench/engine.py --lengths "auto:$n" --decode-tokens 32 --attention "$attention" \
      --out "$out/omnibus_${attention}_$n.json"
  done
done
python3 bench/engine.py --check --baseline "$(IFS=,; echo "${lengths[*]}")" --out "$out/plain.json"
