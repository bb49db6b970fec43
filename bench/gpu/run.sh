#!/usr/bin/env bash
# The device check of issue 9, in one run on a machine with an NVIDIA GPU (no .NET needed there).
# Prepare here:   bench/gpu/publish.sh      (a trimmed self-contained single-file bench, 18.6 MB, into bench/gpu/bin; it
#                 also runs the pre-flight checks that need no GPU — every kernel compiled to PTX (--ptx-check) and an
#                 emulated --quick run — and prints the bench + working tree against the 64 MiB a device call carries.
#                 They are not repeated here: device time is for what only a GPU can measure.)
# Run there:      bash bench/gpu/run.sh     (carry only bench/gpu/bin/Loupe.GpuBench, not the xml files beside it;
#                 writes $OUT or ./gpu-results; ~100 s on an H100)
# No -e: each part runs even when the one before it failed, so a partial result still comes back.
set -uo pipefail
cd "$(dirname "$0")"
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
# cuBLAS from the Python nvidia wheels when it is not on the library path.
for d in $(python3 -c 'import site,glob; print(" ".join(p for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/*/lib")))' 2>/dev/null); do
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# Which CUDA libraries Loupe can find there (the first GPU run of a new image answers "why no cuBLAS" from this file).
{ ls /usr/local/cuda*/lib64/libcublas* /usr/local/cuda*/targets/*/lib/libcublas* 2>&1; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; ldconfig -p | grep -E 'libcuda\.so|libcublas'; } > "$OUT/libs.txt" 2>&1
FIXTURES="${FIXTURES:-../../tests/data/reference}"
PROBE_SHAPE=$([ -n "${QUICK:-}" ] && echo 2000,64,12 || echo 100000,2048,12)  # the Loupe bench's --probe shape (--quick: the small one)
timeout ${LOUPE_TIMEOUT:-300} ./bin/Loupe.GpuBench --device cuda:0 --fixtures "$FIXTURES" --work /tmp/loupe-gpubench ${QUICK:+--quick} --sae --profile --probe --attribution ../../tests/data/attribution --json "$OUT/loupe.json" 2>&1 | tee "$OUT/loupe.txt"
timeout ${TORCH_TIMEOUT:-200} python3 torch_peer.py ${QUICK:+--models gpt2-tiny,llama-tiny --seq 16 --reps 2 --warmup 1 --sae-shape 64,512,8,128} --probe-shape "$PROBE_SHAPE" --sae --fixtures "$FIXTURES" --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.txt"
[ -f "$OUT/loupe.json" ] && [ -f "$OUT/torch.json" ] && python3 compare.py "$OUT/loupe.json" "$OUT/torch.json" | tee "$OUT/summary.txt"
exit 0
