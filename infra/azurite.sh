#!/usr/bin/env bash
# Azurite (Azure Blob emulator) on loopback for the blob-store tests.
# usage: infra/azurite.sh start|stop|status|url   (env: RETOK_AZURITE_PORT, default 10000)
# Installs azurite with npm into infra/node_modules on first use (~35 s), then starts in ~1 s.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PORT=${RETOK_AZURITE_PORT:-10000}
STATE=$here/.state/azurite
BIN=$here/infra/node_modules/.bin/azurite-blob
die() { echo "infra/azurite.sh: $*" >&2; exit 1; }
url() { echo "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$PORT/devstoreaccount1;"; }
listening() { (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; }
alive() { [ -s "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }

case "${1:-start}" in
start)
  if [ ! -x "$BIN" ]; then
    command -v npm >/dev/null || die "npm is required to install azurite (apt-get install npm)"
    echo "infra/azurite.sh: installing azurite (npm)..." >&2
    (cd "$here/infra" && npm install --no-audit --no-fund --silent >/dev/null) || die "npm install azurite failed"
  fi
  mkdir -p "$STATE"
  if alive; then url; exit 0; fi
  [ -s "$STATE/pid" ] && { echo "infra/azurite.sh: removing stale pid file" >&2; rm -f "$STATE/pid"; }
  listening && die "port $PORT on 127.0.0.1 is in use by another process; set RETOK_AZURITE_PORT to a free port"
  # --disableTelemetry: no outbound traffic; --skipApiVersionCheck: the SDK speaks a newer API than Azurite knows.
  setsid "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" --location "$STATE/data" --debug "$STATE/debug.log" \
    --skipApiVersionCheck --loose --disableTelemetry >"$STATE/azurite.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pid"
  for _ in $(seq 1 100); do listening && { url; exit 0; }; alive || break; sleep 0.1; done
  die "azurite did not start, see $STATE/azurite.log" ;;
stop)
  if alive; then kill -- -"$(cat "$STATE/pid")" 2>/dev/null || kill "$(cat "$STATE/pid")" 2>/dev/null || true; fi
  rm -f "$STATE/pid" ;;
status) alive && echo "running on 127.0.0.1:$PORT" || { echo "stopped"; exit 3; } ;;
url) url ;;
*) die "usage: $0 start|stop|status|url" ;;
esac
