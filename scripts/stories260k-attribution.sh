#!/bin/bash
# The issue-10 real-model run: per-layer transcoders and a cross-layer transcoder on stories260K,
# loss recovered with every MLP replaced, attribution graphs for three prompts, and one path checked
# by intervention. About 15 minutes on 2 cores. Usage: scripts/stories260k-attribution.sh [OUT]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
L="$here/loupe"
M="$here/../../shared/models/stories260K"
OUT="${1:-stories260k-attribution}"
mkdir -p "$OUT" && cd "$OUT"
SRC=generate:600
for l in 0 1 2 3 4; do
  [ -f tc/layer_$l/sae_weights.safetensors ] || "$L" sae train --model "$M" --source $SRC --context-size 128 \
      --hook blocks.$l.mlp.hook_in --target-hook blocks.$l.hook_mlp_out \
      --architecture topk --k 8 --d-sae 512 --steps 1500 --batch-size 1024 --out tc/layer_$l
done
[ -f clt/clt_weights.safetensors ] || "$L" clt train --model "$M" --source $SRC --context-size 128 \
    --architecture topk --k 8 --d-sae 512 --steps 1500 --batch-size 1024 --out clt
"$L" clt eval --model "$M" --transcoders tc --source generate:80 --seed 7 --out eval-tc
"$L" clt eval --model "$M" --transcoders clt --source generate:80 --seed 7 --out eval-clt
i=0
for p in "Once upon a time, there was a little girl named Lily. She loved to play outside. One day," \
         "Tom and Sue went to the park. Tom saw a big dog. He said to" \
         "The cat sat on the mat. The cat was very"; do
  i=$((i+1))
  for tc in tc clt; do "$L" attribute --model "$M" --transcoders $tc --prompt "$p" --out graphs-$tc --slug prompt$i; done
done
# The path token " to" → CLT feature 0:428 → feature 3:182 → logit "T" (→ " Tom") in prompt 2: ablating
# 3:182 at position 25 with everything frozen moves the demeaned "T" logit by −A (−0.993); freely, by more.
P="Tom and Sue went to the park. Tom saw a big dog. He said to"
"$L" intervene --model "$M" --transcoders clt --prompt "$P" --edit "3:25:182*0" --top 3 --frozen
"$L" intervene --model "$M" --transcoders clt --prompt "$P" --edit "3:25:182*0" --top 3 --generate 12
