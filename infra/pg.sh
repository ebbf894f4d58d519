#!/usr/bin/env bash
# Local PostgreSQL cluster on loopback for tests, CI and the quickstart.
# usage: infra/pg.sh start|stop|status|url   (env: RETOK_PG_PORT; RETOK_PG_ROOT, the state folder, default .state/pg)
# Idempotent: a second start is a no-op (~0.2 s). Data lives in .state/pg (git-ignored), or under /tmp when the
# 'postgres' user cannot traverse the repo path (e.g. a clone under /root), which the script says.
# Port: RETOK_PG_PORT, else the one saved in the state folder, else 55432 when free, else a free port derived from the
# state folder's path (infra/ports.sh), so a second checkout on the same machine starts its own cluster beside the first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PGROOT=${RETOK_PG_ROOT:-$here/.state/pg}
cmd=${1:-start}
. "$here/infra/ports.sh"

die() { echo "infra/pg.sh: $*" >&2; exit 1; }

if [ "$cmd" = start ] && ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  echo "infra/pg.sh: installing PostgreSQL (apt)..." >&2
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and this user cannot apt-get install it: sudo apt-get install postgresql"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

if [ "$(id -u)" = 0 ]; then   # initdb refuses root: run the cluster as 'postgres'
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  as_pg() { runuser -u postgres -- "$@"; }
  mkdir -p "$PGROOT" 2>/dev/null || true
  if ! runuser -u postgres -- test -x "$(dirname "$PGROOT")" 2>/dev/null; then
    PGROOT=/tmp/retok-pg-$(printf %s "$here" | sha1sum | cut -c1-10)
    echo "infra/pg.sh: user postgres cannot traverse $here; cluster data goes to $PGROOT" >&2
  fi
else
  as_pg() { "$@"; }
fi
PGDATA=$PGROOT/data

running() { [ -n "$PGBIN" ] && [ -s "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
# The port our cluster listens on (line 4 of postmaster.pid), when its postmaster is alive.
live_port() { [ -s "$PGDATA/postmaster.pid" ] && kill -0 "$(head -1 "$PGDATA/postmaster.pid")" 2>/dev/null && sed -n 4p "$PGDATA/postmaster.pid"; }
PGPORT=$(live_port || known_port RETOK_PG_PORT 55432 "$PGROOT")

case "$cmd" in
start)
  mkdir -p "$PGROOT"; [ "$(id -u)" = 0 ] && chown postgres: "$PGROOT"
  if running; then
    [ -z "${RETOK_PG_PORT:-}" ] || [ "$RETOK_PG_PORT" = "$PGPORT" ] \
      || die "this checkout's cluster already runs on port $PGPORT, not RETOK_PG_PORT=$RETOK_PG_PORT; stop it first (infra/pg.sh stop) or unset RETOK_PG_PORT"
  else
    if [ -f "$PGDATA/postmaster.pid" ]; then
      pid=$(head -1 "$PGDATA/postmaster.pid")
      if ! kill -0 "$pid" 2>/dev/null; then echo "infra/pg.sh: removing stale postmaster.pid (pid $pid is gone)" >&2; rm -f "$PGDATA/postmaster.pid"; fi
    fi
    PGPORT=$(pick_port RETOK_PG_PORT 55432 "$PGROOT")
    port_listening "$PGPORT" && die "port $PGPORT on 127.0.0.1 is in use by another process; set RETOK_PG_PORT to a free port (or unset it to pick one)"
    [ -s "$PGDATA/PG_VERSION" ] || as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$PGROOT/initdb.log" \
      || die "initdb failed, see $PGROOT/initdb.log"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$PGROOT -c max_connections=300 ${RETOK_PG_FAST:+-c fsync=off -c synchronous_commit=off -c full_page_writes=off}" start >/dev/null \
      || die "PostgreSQL failed to start, see $PGROOT/server.log"
  fi
  "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT" -t 30 >/dev/null || die "PostgreSQL on 127.0.0.1:$PGPORT is not accepting connections"
  "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc "select 1 from pg_database where datname='retok'" | grep -q 1 \
    || "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc 'create database retok' >/dev/null
  echo "Host=127.0.0.1;Port=$PGPORT;Username=postgres;Database=retok" ;;
stop)   [ -s "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true ;;
status) running && echo "running on 127.0.0.1:$PGPORT (data $PGDATA)" || { echo "stopped"; exit 3; } ;;
url)    echo "Host=127.0.0.1;Port=$PGPORT;Username=postgres;Database=retok" ;;
*) die "usage: $0 start|stop|status|url" ;;
esac
