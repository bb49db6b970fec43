#!/usr/bin/env bash
# Builds the self-contained single-file GPU bench that bench/gpu/run.sh runs (the device machine has no .NET), checks it
# here without a GPU, and prints its size against the 64 MiB a device call carries (the working tree + the bench).
#
# Trimmed (TrimMode=partial, set in Loupe.GpuBench.csproj with what the bench needs to survive it): 41.7 MB untrimmed,
# 18.6 MB trimmed. The trim analysis warns about Loupe's reflection-based JSON (IL2026); those warnings are suppressed for
# this publish only (they are errors everywhere else), and the two checks below stand for them:
#   --ptx-check   every kernel compiled to PTX for sm_90 (the emulated device never does): the CUDA path still finds and
#                 reads every kernel after trimming. Not run by run.sh: it needs no GPU, and device time is scarce.
#   a smoke run   --quick on the emulated device: model loading (config.json, safetensors), parity on every fixture, the
#                 SAE step, the profile (DispatchProxy), attribution and the JSON report, each must work and report no FAILED.
# Either failing fails this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=bench/gpu/bin/Loupe.GpuBench
# ILLink reuses its last output when only a -p: switch changed (switches are not among its inputs): link afresh. A failed
# publish must not leave an older bench behind looking new.
rm -rf bench/Loupe.GpuBench/obj/Release/net10.0/linux-x64/linked bench/gpu/bin
# DebugType=none: no pdbs beside the file (they are not bundled either way); EventSourceSupport=false: no EventSource
# tracing in the runtime (unused here). UseSystemResourceKeys would save 0.3 MB more but turns the framework's exception
# messages into resource keys, and a message is often all a GPU run brings back.
# UNTRIMMED=1: the whole framework (41.7 MB; fits while the tree stays under ~22 MiB) — the fallback should the trimmed
# file fail on a GPU in a way the two checks below cannot see here.
trim=(-p:PublishTrimmed=true -p:SuppressTrimAnalysisWarnings=true)
[ "${UNTRIMMED:-0}" = 1 ] && trim=()
dotnet publish bench/Loupe.GpuBench -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true \
  -p:EnableCompressionInSingleFile=true -p:IncludeNativeLibrariesForSelfExtract=true \
  "${trim[@]}" -p:DebugType=none -p:EventSourceSupport=false \
  -o bench/gpu/bin -v quiet -nologo

echo "== pre-flight: PTX"
"$BIN" --ptx-check || { echo "publish.sh: --ptx-check failed: the trimmed bench cannot compile every kernel to PTX" >&2; exit 1; }

echo "== pre-flight: emulated smoke run"
smoke=$(mktemp -d)
trap 'rm -rf "$smoke"' EXIT
(cd bench/gpu && ./bin/Loupe.GpuBench --device emulated --quick --fixtures ../../tests/data/reference --work "$smoke/work" \
  --sae --profile --probe --attribution ../../tests/data/attribution --json "$smoke/loupe.json") > "$smoke/loupe.txt" 2>&1 \
  || { cat "$smoke/loupe.txt"; echo "publish.sh: the emulated smoke run failed" >&2; exit 1; }
if grep -q FAILED "$smoke/loupe.txt"; then
  grep FAILED "$smoke/loupe.txt"; echo "publish.sh: the emulated smoke run reported failures" >&2; exit 1
fi
python3 - "$smoke/loupe.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
missing = [k for k in ("parity", "speed", "sae_step", "sae_step_aux", "attribution", "probe_eval") if not r.get(k)]
missing += [f"{k}.profile" for k in ("sae_step", "sae_step_aux") if r.get(k) and not r[k].get("profile")]
if missing: sys.exit(f"publish.sh: the smoke run's JSON lacks {', '.join(missing)}")
print(f"smoke run: parity on {len(r['parity'])} fixture/weight pairs, {len(r['speed'])} speed rows, SAE steps with profiles, "
      f"attribution adjacency {r['attribution']['adjacency_rel_diff']:.2e} from the CPU's, probe gradient {r['probe_eval']['gradient_rel_diff']:.2e} from the CPU's")
PY

# What a device call carries: the files git does not ignore (tracked or not) plus the bench.
tree=$(git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done | du -cb --files0-from=- | tail -1 | cut -f1)
bench=$(stat -c %s "$BIN")
awk -v t="$tree" -v b="$bench" 'BEGIN {
  m = 1048576; total = t + b; left = 64 * m - total
  printf "bench %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB a device call carries (%.1f MiB left)\n", b / m, t / m, total / m, left / m
  if (left < 0) { print "publish.sh: over the 64 MiB a device call carries" > "/dev/stderr"; exit 1 }
}'
