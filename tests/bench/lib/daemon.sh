# Shared by the benchmarks that load one `sdctl daemon` (floods.sh, faults.sh, sandboxes.sh):
# a throw-away "host" namespace, a work directory (tmpfs where there is one, like /run), the
# daemon in that namespace on CPU 0, and a cleanup that ends only what was started here and
# removes every kernel object of the daemon's. Source it, then:
#
#   bench_init TAG          # HNS=sdbTAG-$$, W=work dir, PIDS=(), EXTRA_NS=(); trap on EXIT
#   bench_daemon [ARGS…]    # starts the daemon (extra flags appended), waits for its API;
#                           # sets DPID and exports SDNET_SOCKET; needs SDCTL set
#   in_sb SB CMD…           # runs CMD in sandbox SB's namespace, on CPU 1
#   rss, fds                # the daemon's RSS (KiB) and open descriptors
#
# The daemon runs under `ip netns exec` (its own mount namespace): its sandboxes' namespace
# files are reached through /proc/DPID/root. OUT (results dir) gets daemon.log at the end.

bench_init() {
  local tag=$1
  HNS=sdb$tag-$$
  W=$(mktemp -d "/dev/shm/sdb$tag-w.XXXXXX" 2>/dev/null || mktemp -d "/tmp/sdb$tag-w.XXXXXX")
  PIDS=()
  EXTRA_NS=()
  trap bench_cleanup EXIT
  ip netns add "$HNS"
  ip -n "$HNS" link set lo up
  echo "nameserver 127.0.0.53" > "$W/resolv.conf"
}

bench_cleanup() {
  set +e
  local p ns
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  if [ -n "${SDCTL:-}" ] && [ -d "$W/state" ]; then
    ip netns exec "$HNS" "$SDCTL" daemon --cleanup --state-dir "$W/state" --run-dir "$W/run" \
      --socket "$W/sock" --etc-netns-dir "$W/etc" --no-netns-links >/dev/null 2>&1
  fi
  ip netns del "$HNS" 2>/dev/null
  for ns in "${EXTRA_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ -n "${OUT:-}" ] && cp "$W/daemon.log" "$OUT/daemon.log" 2>/dev/null
  rm -rf "$W"
}

bench_daemon() {
  ip netns exec "$HNS" taskset -c 0 "$SDCTL" daemon --state-dir "$W/state" --run-dir "$W/run" \
    --socket "$W/sock" --etc-netns-dir "$W/etc" --no-netns-links --resolv-conf "$W/resolv.conf" \
    "$@" >"$W/daemon.log" 2>&1 &
  DPID=$!
  PIDS+=("$DPID")
  export SDNET_SOCKET=$W/sock
  local _
  for _ in $(seq 100); do "$SDCTL" ps >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "the daemon did not start; its log:" >&2
  cat "$W/daemon.log" >&2
  return 1
}

in_sb() { local sb=$1; shift; ip netns exec "$HNS" nsenter --net="/proc/$DPID/root$W/run/netns/$sb" taskset -c 1 "$@"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$DPID/status"; }
fds() { ls "/proc/$DPID/fd" | wc -l; }
