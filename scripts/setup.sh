#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine: OpenBLAS (run-time BLAS), Chromium (the web app's end-to-end tests),
# the .NET 10 SDK if missing, the web front end (npm), then restores and builds Loupe. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=()
ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0' || need_apt+=(libopenblas0-pthread)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v dotnet >/dev/null || ! dotnet --list-sdks | grep -q '^10\.'; then
  curl -sSL https://dot.net/v1/dotnet-install.sh -o /tmp/dotnet-install.sh
  bash /tmp/dotnet-install.sh --channel 10.0 --install-dir "$HOME/.dotnet" >/dev/null
  export PATH="$HOME/.dotnet:$PATH"
fi
# The web app's front end (web/) is built into src/Loupe.Serve/wwwroot, which the server embeds; build it before dotnet.
if command -v npm >/dev/null; then
  (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent) >/dev/null
else
  echo "setup: npm not found; skipping the web front end (loupe serve will say it is not built; its browser tests skip)"
fi
dotnet restore Loupe.sln -v quiet
dotnet build Loupe.sln -c Release --no-restore -v quiet -nologo | grep -E "error|Warn|Elapsed" || true
