#!/usr/bin/env bash
# The embedded local stack: PostgreSQL (always) and Azurite (with --blob).
# usage: infra/stack.sh start [--blob] | stop | status
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-start}; shift || true
blob=0; for a in "$@"; do [ "$a" = --blob ] && blob=1; done
case "$cmd" in
start) "$here/pg.sh" start >/dev/null; echo "postgres: $("$here/pg.sh" url)"
       if [ $blob = 1 ]; then echo "azurite: $("$here/azurite.sh" start)"; fi ;;
stop)  "$here/azurite.sh" stop; "$here/pg.sh" stop ;;
status) "$here/pg.sh" status || true; "$here/azurite.sh" status || true ;;
*) echo "usage: $0 start [--blob]|stop|status" >&2; exit 1 ;;
esac
