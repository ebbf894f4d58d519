#!/usr/bin/env bash
# Azurite (Azure Blob emulator) on loopback for the blob-store tests.
# usage: infra/azurite.sh start|stop|status|url   (env: RETOK_AZURITE_PORT; RETOK_AZURITE_ROOT, the state folder,
# default .state/azurite). Installs azurite with npm into infra/node_modules on first use (~35 s), then starts in ~1 s.
# Port: RETOK_AZURITE_PORT, else the one saved in the state folder, else 10000 when free, else a free port derived
# from the state folder's path (infra/ports.sh), so two checkouts on one machine each get their own.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
STATE=${RETOK_AZURITE_ROOT:-$here/.state/azurite}
BIN=$here/infra/node_modules/.bin/azurite-blob
. "$here/infra/ports.sh"
PORT=$(known_port RETOK_AZURITE_PORT 10000 "$STATE")
die() { echo "infra/azurite.sh: $*" >&2; exit 1; }
url() { echo "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:$PORT/devstoreaccount1;"; }
listening() { port_listening "$PORT"; }
alive() { [ -s "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }

case "${1:-start}" in
start)
  if [ ! -x "$BIN" ]; then
    command -v npm >/dev/null || die "npm is required to install azurite (apt-get install npm)"
    echo "infra/azurite.sh: installing azurite (npm)..." >&2
    (cd "$here/infra" && npm install --no-audit --no-fund --silent >/dev/null) || die "npm install azurite failed"
  fi
  mkdir -p "$STATE"
  if alive; then
    # the running one listens on the saved port: a different RETOK_AZURITE_PORT would hand out a dead URL
    live=$(cat "$STATE/port" 2>/dev/null || echo "$PORT")
    [ "$live" = "$PORT" ] \
      || die "this checkout's azurite already runs on port $live, not RETOK_AZURITE_PORT=$PORT; stop it first (infra/azurite.sh stop) or unset RETOK_AZURITE_PORT"
    url; exit 0
  fi
  [ -s "$STATE/pid" ] && { echo "infra/azurite.sh: removing stale pid file" >&2; rm -f "$STATE/pid"; }
  PORT=$(pick_port RETOK_AZURITE_PORT 10000 "$STATE")
  listening && die "port $PORT on 127.0.0.1 is in use by another process; set RETOK_AZURITE_PORT to a free port (or unset it to pick one)"
  echo "$PORT" > "$STATE/port"   # what the running server listens on, also when RETOK_AZURITE_PORT chose it
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
