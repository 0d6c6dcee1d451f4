#!/usr/bin/env bash
# Service load-balancing benchmark (issue: services): sdnet-lb's nftables table, applied with
# netstack's in-process libnftables exactly as the daemon applies it, in namespaces that
# lb-bench creates and deletes.
#
#   tests/bench/lb.sh                          # 100, 1,000, 5,000 services × 10 backends
#   SIZES=100,1000 CONNS=500 tests/bench/lb.sh # quicker
# Env: SIZES, BACKENDS, CHANGES (timed single-backend replacements per size), CONNS
# (first-packet connections each way), OUT (results dir).
#
# Prints one line per measurement (key=value, from lb-bench) and a summary against the
# targets: one backend change with 1,000 services ≤ 10 ms and flat from 100 to 5,000; the
# full-load time; first-packet latency through the VIP as a ratio to direct-to-a-task.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SIZES=${SIZES:-100,1000,5000}
BACKENDS=${BACKENDS:-10}
CHANGES=${CHANGES:-50}
CONNS=${CONNS:-2000}
OUT=${OUT:-$(mktemp -d /tmp/sdbench-lb.XXXXXX)}
mkdir -p "$OUT"

if [ "$(id -u)" != 0 ]; then echo "lb.sh: run as root (network namespaces)" >&2; exit 1; fi
command -v nft >/dev/null || { apt-get update -qq && apt-get install -y -qq nftables >/dev/null; }
cargo build --release -q -p sdnet-tests --bin lb-bench
BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/lb-bench
# Other jobs on this 2-core machine would otherwise steal the CPU.
echo -20 > /proc/self/autogroup 2>/dev/null || true

# lb-bench deletes its namespaces itself, on exit and on SIGINT/SIGTERM.
taskset -c 0 "$BENCH" --sizes "$SIZES" --backends "$BACKENDS" --changes "$CHANGES" \
  --conns "$CONNS" | tee "$OUT/lb-bench.txt"

{
  echo "# sdnet LB benchmark, $(date -u +%F), $(uname -r), $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p')"
  echo "# sdnet revision $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo -dirty), $(nft --version)"
  echo
  echo "| services | full load ms | reload ms | change median ms | change p90 ms | change max ms | add service ms | remove service ms |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk '
    function v(k,   i, a) { for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == k) return a[2] } return "-" }
    /^services=[0-9]+ backends=/ { s = v("services"); load[s] = v("full_load_ms"); reload[s] = v("reload_ms"); order[++n] = s }
    /case=replace_one/ { s = v("services"); med[s] = v("median_ms"); p90[s] = v("p90_ms"); mx[s] = v("max_ms") }
    /case=add_service/ { add[v("services")] = v("median_ms") }
    /case=remove_service/ { del[v("services")] = v("median_ms") }
    /^first_packet services=/ { fp = $0 }
    END {
      for (i = 1; i <= n; i++) { s = order[i]
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", s, load[s], reload[s], med[s], p90[s], mx[s], add[s], del[s] }
      if (fp != "") {
        $0 = fp
        printf "\nFirst packet (new TCP connection + first reply byte, table of %s services): direct median %s µs, p99 %s µs; via VIP median %s µs, p99 %s µs; VIP/direct ratio median %s, p99 %s.\n", v("services"), v("direct_median_us"), v("direct_p99_us"), v("vip_median_us"), v("vip_p99_us"), v("ratio_median"), v("ratio_p99")
      }
    }' "$OUT/lb-bench.txt"
  grep '^first_packet backends_hit' "$OUT/lb-bench.txt" | sed 's/^first_packet /Spread over the tasks: /'
} | tee "$OUT/results.md"
echo "results: $OUT/results.md"
