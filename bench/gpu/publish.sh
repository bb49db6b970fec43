#!/usr/bin/env bash
# Builds the self-contained single-file GPU bench that bench/gpu/run.sh runs (the device machine has no .NET).
set -euo pipefail
cd "$(dirname "$0")/../.."
dotnet publish bench/Loupe.GpuBench -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true \
  -p:EnableCompressionInSingleFile=true -p:IncludeNativeLibrariesForSelfExtract=true -o bench/gpu/bin -v quiet -nologo
ls -la bench/gpu/bin
