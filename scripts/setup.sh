#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine: OpenBLAS (run-time BLAS), the .NET 10 SDK if missing,
# then restores and builds Loupe. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=()
ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0' || need_apt+=(libopenblas0-pthread)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v dotnet >/dev/null || ! dotnet --list-sdks | grep -q '^10\.'; then
  curl -sSL https://dot.net/v1/dotnet-install.sh -o /tmp/dotnet-install.sh
  bash /tmp/dotnet-install.sh --channel 10.0 --install-dir "$HOME/.dotnet" >/dev/null
  export PATH="$HOME/.dotnet:$PATH"
fi
dotnet restore Loupe.sln -v quiet
dotnet build Loupe.sln -c Release --no-restore -v quiet -nologo | grep -E "error|Warn|Elapsed" || true
