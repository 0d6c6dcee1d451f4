#!/usr/bin/env bash
# Floods against the embedded resolver, at the server's saturation rate (issue 15 item 2):
#  1. dnsperf at saturation inside a sandbox (127.0.0.11), alone and then with garbage
#     datagrams at half that rate (and malformed TCP streams at 1/50 of it) into the same
#     listener: valid queries answered (share) and QPS against the run without garbage;
#  2. 10,000 TCP connections from one sandbox (64 at a time), each asking one query, while
#     a quiet sandbox asks over UDP and TCP at 200/s;
#  3. slow-loris on every sandbox but one at once (200 half-sent queries each, the cap is 64
#     per listener), while every attacked sandbox and the quiet one keep asking.
# Daemon RSS and descriptors before and after. Everything runs in namespaces made here; only
# processes started here are ended.
#
#   tests/bench/floods.sh            # DUR=10 s per phase, 8 attacked sandboxes
# Env: DUR, SANDBOXES, STORM (connections, 10000), OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DUR=${DUR:-10}
SANDBOXES=${SANDBOXES:-8}
STORM=${STORM:-10000}
OUT=${OUT:-$(mktemp -d /tmp/sdbench-floods.XXXXXX)}
mkdir -p "$OUT"
ANCHORS=${ANCHORS:-$ROOT/../shared/bench}
# shellcheck source=lib/daemon.sh
. tests/bench/lib/daemon.sh

command -v dnsperf >/dev/null || bash "$ANCHORS/anchors.sh" install
cargo build --release -q -p sdctl -p sdnet-tests --bin sdctl --bin flood
SDCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/sdctl
FLOOD=${CARGO_TARGET_DIR:-$ROOT/target}/release/flood
echo -20 > /proc/self/autogroup 2>/dev/null || true

bench_init fl
# The daemon on CPU 0, the clients on CPU 1.
bench_daemon
"$SDCTL" network create --subnet 10.204.0.0/16 fl >/dev/null
for s in quiet $(seq -f 'v%g' 1 "$SANDBOXES"); do "$SDCTL" run -d --name "$s" --network fl >/dev/null; done
for i in $(seq 0 99); do "$SDCTL" run -d --name "n$i" --network fl >/dev/null; done
RSS0=$(rss) FDS0=$(fds)
python3 - "$W/q.txt" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for _ in range(100000):
        f.write(f"n{random.randrange(100)} A\n")
PY
dp() { in_sb v1 dnsperf -s 127.0.0.11 -p 53 -d "$W/q.txt" -l "$DUR" -c 4 -q 100 -t 1 2>&1; }
kv() { grep -oE "$1=[0-9.]+" | head -1 | cut -d= -f2; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", 100 * a / b; else print "n/a" }'; }

echo "== 1. dnsperf at saturation in v1, alone, then with garbage into the same listener"
dp > "$OUT/dnsperf-alone.txt"
q_alone=$(awk '/Queries per second/ {printf "%d", $4}' "$OUT/dnsperf-alone.txt")
in_sb v1 "$FLOOD" garbage 127.0.0.11:53 "$((DUR + 1))" "$((q_alone / 2))" > "$OUT/garbage.txt" &
GP=$!
sleep 0.5
dp > "$OUT/dnsperf-garbage.txt"
wait $GP
q_garb=$(awk '/Queries per second/ {printf "%d", $4}' "$OUT/dnsperf-garbage.txt")
sent=$(awk '/Queries sent/ {print $3}' "$OUT/dnsperf-garbage.txt")
done_=$(awk '/Queries completed/ {print $3}' "$OUT/dnsperf-garbage.txt")
sent0=$(awk '/Queries sent/ {print $3}' "$OUT/dnsperf-alone.txt")
done0=$(awk '/Queries completed/ {print $3}' "$OUT/dnsperf-alone.txt")
garb=$(kv datagrams < "$OUT/garbage.txt") streams=$(kv tcp_streams < "$OUT/garbage.txt")
echo "alone: $q_alone QPS, $done0/$sent0 answered; with garbage: $q_garb QPS, $done_/$sent answered; garbage: $garb datagrams, $streams TCP streams in $((DUR + 1)) s"

echo "== 2. $STORM TCP connections from v1 (64 at a time); quiet asks at 200/s"
in_sb quiet "$FLOOD" probe 127.0.0.11:53 "$DUR" 200 n1 > "$OUT/storm-quiet-udp.txt" &
P1=$!
in_sb quiet "$FLOOD" probe 127.0.0.11:53 "$DUR" 50 n2 tcp > "$OUT/storm-quiet-tcp.txt" &
P2=$!
in_sb v1 "$FLOOD" storm 127.0.0.11:53 "$STORM" 64 n3 | tee "$OUT/storm.txt"
wait $P1 $P2
cat "$OUT/storm-quiet-udp.txt" "$OUT/storm-quiet-tcp.txt"

echo "== 3. slow-loris on v1..v$SANDBOXES at once (200 connections each); everybody keeps asking"
LP=()
for i in $(seq 1 "$SANDBOXES"); do
  in_sb "v$i" "$FLOOD" loris 127.0.0.11:53 200 "$DUR" > "$OUT/loris-v$i.txt" &
  LP+=($!)
done
sleep 1
PP=()
for i in $(seq 1 "$SANDBOXES"); do
  in_sb "v$i" "$FLOOD" probe 127.0.0.11:53 "$((DUR - 2))" 10 n4 tcp > "$OUT/loris-probe-v$i.txt" &
  PP+=($!)
done
in_sb quiet "$FLOOD" probe 127.0.0.11:53 "$((DUR - 2))" 200 n5 > "$OUT/loris-quiet-udp.txt" &
PP+=($!)
in_sb quiet "$FLOOD" probe 127.0.0.11:53 "$((DUR - 2))" 50 n6 tcp > "$OUT/loris-quiet-tcp.txt" &
PP+=($!)
wait "${PP[@]}" "${LP[@]}"
lsent=0 lok=0
for i in $(seq 1 "$SANDBOXES"); do
  lsent=$((lsent + $(kv sent < "$OUT/loris-probe-v$i.txt"))); lok=$((lok + $(kv answered < "$OUT/loris-probe-v$i.txt")))
done
held=$(cat "$OUT"/loris-v*.txt | grep -oE 'still_open=[0-9]+' | cut -d= -f2 | sort -n | tail -1)
cat "$OUT/loris-quiet-udp.txt" "$OUT/loris-quiet-tcp.txt"
sleep 2
RSS1=$(rss) FDS1=$(fds)

f() { kv "$2" < "$OUT/$1"; }
{
  echo "# floods — $(date -u +%F) — $(uname -r) — $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2}') — sdctl $(git rev-parse --short HEAD 2>/dev/null)"
  echo
  echo "| what | result |"
  echo "|---|---|"
  echo "| dnsperf at saturation, alone: QPS; answered | $q_alone; $done0 / $sent0 ($(pct "$done0" "$sent0") %) |"
  echo "| same with garbage ($garb datagrams + $streams malformed TCP streams): QPS; answered | $q_garb ($(pct "$q_garb" "$q_alone") % of alone); $done_ / $sent ($(pct "$done_" "$sent") %) |"
  echo "| $STORM TCP connections from one sandbox: connected / answered; seconds | $(f storm.txt connected) / $(f storm.txt answered); $(f storm.txt secs) |"
  echo "| meanwhile another sandbox: UDP answered, p99; TCP answered, p99 | $(f storm-quiet-udp.txt answered)/$(f storm-quiet-udp.txt sent), $(f storm-quiet-udp.txt p99_ms) ms; $(f storm-quiet-tcp.txt answered)/$(f storm-quiet-tcp.txt sent), $(f storm-quiet-tcp.txt p99_ms) ms |"
  echo "| slow-loris on $SANDBOXES sandboxes × 200 connections: most held open at the end in one sandbox | $held (cap 64) |"
  echo "| meanwhile new TCP queries in the attacked sandboxes: answered | $lok / $lsent |"
  echo "| meanwhile the quiet sandbox: UDP answered, p99; TCP answered, p99 | $(f loris-quiet-udp.txt answered)/$(f loris-quiet-udp.txt sent), $(f loris-quiet-udp.txt p99_ms) ms; $(f loris-quiet-tcp.txt answered)/$(f loris-quiet-tcp.txt sent), $(f loris-quiet-tcp.txt p99_ms) ms |"
  echo "| daemon RSS before → after (KiB); descriptors | $RSS0 → $RSS1; $FDS0 → $FDS1 |"
} | tee "$OUT/results.md"
echo "results: $OUT"
