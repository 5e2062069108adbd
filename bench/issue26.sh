#!/usr/bin/env bash
# Issue 26's benchmarks in one background job on one H200 (results and log under $1, default /tmp/b26):
#   1. first answer at 131K and 262K with bf16 and with fp8 attention (fresh process each), then the plain
#      `generate()` path at the same lengths, in the same job (bench/first_answer.sh);
#   2. ultralong-2m (fp8 weights, fp8 KV, fp8 attention) at synthetic depths 1M, 1.5M and 2M: a 16K-token chunk,
#      a follow-up and decode at each depth, and the projected full 2M prefill (bench/engine.py).
#
#     setsid nohup bash bench/issue26.sh /tmp/b26 > /tmp/b26.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/b26}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=$out ATTENTIONS="bf16 fp8" bash bench/first_answer.sh 131072 262144
python3 bench/engine.py --model ultralong-2m --weight-dtype fp8 --attention fp8 --decode-tokens 64 \
  --depths fp8:1048576,fp8:1572864,fp8:2000000 --project fp8:2000000 --out "$out/synthetic_fp8.json"
echo "issue26 bench done"
