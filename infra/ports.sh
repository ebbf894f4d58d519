# Sourced by infra/pg.sh and infra/azurite.sh: one loopback port per checkout, so two clones on one machine do not
# clash. Order: the env override; the port saved in the state folder; the default when free; else a candidate derived
# from the state folder path, probed upward until free. The choice is saved in STATE/port so later calls reuse it.

port_listening() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# known_port ENVNAME DEFAULT STATE: the port without probing (url/status/stop): env, saved, default.
known_port() {
  if [ -n "${!1:-}" ]; then echo "${!1}"; else cat "$3/port" 2>/dev/null || echo "$2"; fi
}

# pick_port ENVNAME DEFAULT STATE: the port for a server about to start (ours is not running). Prints it; says on
# stderr when it had to move off the default or the saved port.
pick_port() {
  local envname=$1 default=$2 state=$3 saved p
  if [ -n "${!envname:-}" ]; then echo "${!envname}"; return; fi
  saved=$(cat "$state/port" 2>/dev/null || true)
  if [ -n "$saved" ] && ! port_listening "$saved"; then echo "$saved"; return; fi
  if [ -z "$saved" ] && ! port_listening "$default"; then p=$default
  else
    # 20000-29999: below Linux's ephemeral range (32768+), so no outgoing connection holds it by chance
    p=$(( 20000 + $(printf %s "$state" | cksum | cut -d' ' -f1) % 10000 ))
    while port_listening "$p" || [ "$p" = "$saved" ]; do p=$(( p >= 29999 ? 20000 : p + 1 )); done
    echo "infra: port ${saved:-$default} on 127.0.0.1 is taken by another process; using $p for $state (saved in $state/port; set $envname to choose)" >&2
  fi
  mkdir -p "$state" && echo "$p" > "$state/port"
  echo "$p"
}
