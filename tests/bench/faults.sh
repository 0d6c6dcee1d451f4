#!/usr/bin/env bash
# Upstream faults for a long time (issue 15 item 1): a sandbox asks steadily through
# 127.0.0.11 (UDP at RATE/s, TCP at TCP_RATE/s, every name new, so every query is forwarded)
# while the daemon's only upstream flaps between dead, slow (2x the 2 s budget), SERVFAIL,
# always truncating, huge answers and spoofed replies, FLAP_MS each (the `fault-upstream`
# fixture). Every SAMPLE s it prints the daemon's RSS, descriptors, forwards in flight and
# forward-cache size; at the end, the share of queries answered within the budget + 1.5 s, what
# the answers were, p99 latency and the most forwards in flight (sampled every second).
# Everything runs in a namespace made here, on loopback; only processes started here are ended.
#
#   tests/bench/faults.sh                 # DUR=600 s
#   DUR=60 SAMPLE=10 tests/bench/faults.sh
# Env: DUR, RATE (100), TCP_RATE (4), FLAP_MS (1000), SEED (0: fixed order), SAMPLE (20),
#      OUT, SDCTL + FAULT (skip the build: both binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DUR=${DUR:-600}
RATE=${RATE:-100}
TCP_RATE=${TCP_RATE:-4}
FLAP_MS=${FLAP_MS:-1000}
SEED=${SEED:-0}
SAMPLE=${SAMPLE:-20}
OUT=${OUT:-$(mktemp -d /tmp/sdbench-faults.XXXXXX)}
mkdir -p "$OUT"
# shellcheck source=lib/daemon.sh
. tests/bench/lib/daemon.sh

if [ -z "${SDCTL:-}" ] || [ -z "${FAULT:-}" ]; then
  cargo build --release -q -p sdctl -p sdnet-tests --bin sdctl --bin fault-upstream
  SDCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/sdctl
  FAULT=${CARGO_TARGET_DIR:-$ROOT/target}/release/fault-upstream
fi

bench_init fa
# The daemon's host resolver (127.0.0.53 in $W/resolv.conf) is the fixture.
ip netns exec "$HNS" taskset -c 1 "$FAULT" serve 127.0.0.53:53 flap "flap_ms=$FLAP_MS" "seed=$SEED" \
  "stats=$W/fixture.stats" >"$OUT/fixture.log" 2>&1 &
PIDS+=($!)
# The daemon on CPU 0, the clients and the fixture on CPU 1.
bench_daemon --metrics-addr 127.0.0.1:9153
"$SDCTL" network create --subnet 10.205.0.0/24 fa >/dev/null
"$SDCTL" run -d --name c --network fa >/dev/null
metric() { awk -v m="$1" '$1 == m {v = $2} END {print v + 0}' "$W/metrics.txt"; }
scrape() { ip netns exec "$HNS" curl -sf --max-time 2 http://127.0.0.1:9153/metrics > "$W/metrics.txt" || : > "$W/metrics.txt"; }
kv() { grep -oE "(^| )$1=[0-9.]+" | head -1 | cut -d= -f2; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", 100 * a / b; else print "n/a" }'; }

sleep 1
RSS0=$(rss) FDS0=$(fds)
echo "== $DUR s of $RATE UDP + $TCP_RATE TCP queries/s through a flapping upstream ($FLAP_MS ms per fault); daemon RSS $RSS0 KiB, $FDS0 descriptors"
in_sb c "$FAULT" ask 127.0.0.11:53 names=u clients=16 "rate=$RATE" "secs=$DUR" deadline_ms=3500 \
  > "$OUT/udp.txt" 2> "$OUT/udp.err" &
UP=$!
PIDS+=("$UP")
in_sb c "$FAULT" ask 127.0.0.11:53 names=t clients=4 "rate=$TCP_RATE" "secs=$DUR" deadline_ms=3500 tcp=1 \
  > "$OUT/tcp.txt" 2> "$OUT/tcp.err" &
TP=$!
PIDS+=("$TP")

START=$(date +%s)
MAXIF=0
printf '%6s %9s %5s %9s %13s %11s %9s\n' t_s rss_kib fds inflight cache_entries cache_kib upstream_q | tee "$OUT/curve.txt"
next=0
while kill -0 "$UP" 2>/dev/null || kill -0 "$TP" 2>/dev/null; do
  scrape
  inf=$(metric sdnet_dns_inflight)
  [ "$inf" -gt "$MAXIF" ] && MAXIF=$inf
  now=$(( $(date +%s) - START ))
  if [ "$now" -ge "$next" ]; then
    upq=$(awk -F= '$1 == "udp" || $1 == "tcp" {s += $2} END {print s + 0}' "$W/fixture.stats" 2>/dev/null)
    printf '%6d %9d %5d %9d %13d %11d %9d\n' "$now" "$(rss)" "$(fds)" "$inf" \
      "$(metric sdnet_dns_cache_entries)" "$(( $(metric sdnet_dns_cache_bytes) / 1024 ))" "$upq" | tee -a "$OUT/curve.txt"
    next=$((next + SAMPLE))
  fi
  sleep 1
done
wait "$UP" "$TP" || true
sleep 5
scrape
now=$(( $(date +%s) - START ))
upq=$(awk -F= '$1 == "udp" || $1 == "tcp" {s += $2} END {print s + 0}' "$W/fixture.stats")
printf '%6d %9d %5d %9d %13d %11d %9d   (5 s after the load)\n' "$now" "$(rss)" "$(fds)" "$(metric sdnet_dns_inflight)" \
  "$(metric sdnet_dns_cache_entries)" "$(( $(metric sdnet_dns_cache_bytes) / 1024 ))" "$upq" | tee -a "$OUT/curve.txt"
RSS1=$(rss) FDS1=$(fds)
cp "$W/fixture.stats" "$OUT/fixture.stats"

u=$OUT/udp.txt t=$OUT/tcp.txt
RMAX=$(awk 'NR > 1 && $2 > m {m = $2} END {print m}' "$OUT/curve.txt")
# RSS once the cache had filled: the curve's second half.
HALF=$(awk -v d="$DUR" 'NR > 1 && $1 >= d / 2 && $1 <= d {if (!n++ || $2 < lo) lo = $2; if ($2 > hi) hi = $2} END {printf "%d-%d", lo, hi}' "$OUT/curve.txt")
{
  echo "# faults — $(date -u +%F) — $(uname -r) — $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}') — sdctl $(git rev-parse --short HEAD 2>/dev/null)"
  echo
  echo "| what | result |"
  echo "|---|---|"
  echo "| load | $DUR s; UDP $RATE/s (16 clients), TCP $TCP_RATE/s (4 clients); upstream flapping every $FLAP_MS ms (seed $SEED) |"
  echo "| UDP: answered within 3.5 s | $(kv replied < "$u") / $(kv sent < "$u") ($(pct "$(kv replied < "$u")" "$(kv sent < "$u")") %), lost $(kv lost < "$u") |"
  echo "| UDP answers: correct / huge (TC prefix) / TC empty / SERVFAIL / REFUSED / poisoned / wrong | $(kv correct < "$u") / $(kv huge_ok < "$u") / $(kv tc_empty < "$u") / $(kv servfail < "$u") / $(kv refused < "$u") / $(kv poisoned < "$u") / $(kv wrong < "$u") |"
  echo "| UDP latency p50 / p99 / max (ms) | $(kv p50_ms < "$u") / $(kv p99_ms < "$u") / $(kv max_ms < "$u") |"
  echo "| TCP: answered within 3.5 s | $(kv replied < "$t") / $(kv sent < "$t") ($(pct "$(kv replied < "$t")" "$(kv sent < "$t")") %), lost $(kv lost < "$t") |"
  echo "| TCP answers: correct / huge (all 2,000 records) / SERVFAIL / REFUSED / poisoned / wrong | $(kv correct < "$t") / $(kv huge_ok < "$t") / $(kv servfail < "$t") / $(kv refused < "$t") / $(kv poisoned < "$t") / $(kv wrong < "$t") |"
  echo "| TCP latency p50 / p99 / max (ms) | $(kv p50_ms < "$t") / $(kv p99_ms < "$t") / $(kv max_ms < "$t") |"
  echo "| upstream: queries (UDP / TCP); spoofed replies sent; slow replies sent late | $(awk -F= '$1=="udp"{print $2}' "$OUT/fixture.stats") / $(awk -F= '$1=="tcp"{print $2}' "$OUT/fixture.stats"); $(awk -F= '$1=="spoofed"{print $2}' "$OUT/fixture.stats"); $(awk -F= '$1=="late"{print $2}' "$OUT/fixture.stats") |"
  echo "| forwards in flight, most seen (1 s samples; bound 512) | $MAXIF |"
  echo "| daemon RSS (KiB): start → end of load → 5 s after; max; second half min-max | $RSS0 → $(awk -v d="$DUR" 'NR > 1 && $1 <= d {v = $2} END {print v}' "$OUT/curve.txt") → $RSS1; $RMAX; $HALF |"
  echo "| daemon descriptors: start → 5 s after | $FDS0 → $FDS1 |"
} | tee "$OUT/results.md"
echo "curve: $OUT/curve.txt; results: $OUT"
