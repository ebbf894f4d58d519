#!/usr/bin/env bash
# Local PostgreSQL cluster on loopback for tests, CI and the quickstart.
# usage: infra/pg.sh start|stop|status|url   (env: RETOK_PG_PORT, default 55432)
# Idempotent: a second start is a no-op (~0.2 s). Data lives in .state/pg (git-ignored), or under /tmp when the
# 'postgres' user cannot traverse the repo path (e.g. a clone under /root), which the script says.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PGPORT=${RETOK_PG_PORT:-55432}
PGROOT=${RETOK_PG_ROOT:-$here/.state/pg}

die() { echo "infra/pg.sh: $*" >&2; exit 1; }

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  echo "infra/pg.sh: installing PostgreSQL (apt)..." >&2
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and this user cannot apt-get install it: sudo apt-get install postgresql"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

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

port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$PGPORT") 2>/dev/null; }
running() { [ -s "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

case "${1:-start}" in
start)
  mkdir -p "$PGROOT"; [ "$(id -u)" = 0 ] && chown postgres: "$PGROOT"
  if running; then :; else
    if [ -f "$PGDATA/postmaster.pid" ]; then
      pid=$(head -1 "$PGDATA/postmaster.pid")
      if ! kill -0 "$pid" 2>/dev/null; then echo "infra/pg.sh: removing stale postmaster.pid (pid $pid is gone)" >&2; rm -f "$PGDATA/postmaster.pid"; fi
    fi
    port_busy && die "port $PGPORT on 127.0.0.1 is in use by another process; set RETOK_PG_PORT to a free port"
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
