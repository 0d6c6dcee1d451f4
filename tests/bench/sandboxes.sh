#!/usr/bin/env bash
# Sandbox benchmark: create + attach + DNS ready through the daemon's API, 1,000 sandboxes,
# daemon RSS per idle sandbox, and DNS through 127.0.0.11 from inside a sandbox vs the
# standalone resolver — side by side with Podman's netavark + aardvark-dns doing the same
# (shared/bench/netavark_timing.sh, which also prints the `ip -batch` kernel floor).
#
#   tests/bench/sandboxes.sh            # N=1000 sandboxes, netavark N=200
#   N=200 NV_N=100 tests/bench/sandboxes.sh
# Env: N (sandboxes), MV_N (sandboxes on a macvlan network, after the bridge ones; 0 = skip;
# default 200), CNI_N (sandboxes on a CNI network of the bridge + host-local plugins; 0 = skip;
# default 200), NV_N (netavark containers, 0 = skip), DUR (dnsperf seconds),
# DNS_REPS (alternating dnsperf runs per side, median; default 3), OUT.
# Everything runs in namespaces the script creates; only processes it started are ended.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-1000}
MV_N=${MV_N:-200}
CNI_N=${CNI_N:-200}
NV_N=${NV_N:-200}
DUR=${DUR:-10}
OUT=${OUT:-$(mktemp -d /tmp/sdbench-sb.XXXXXX)}
mkdir -p "$OUT"
ANCHORS=${ANCHORS:-$ROOT/../shared/bench}
# shellcheck source=lib/daemon.sh
. tests/bench/lib/daemon.sh

for t in dnsperf dig nft; do
  command -v $t >/dev/null || bash "$ANCHORS/anchors.sh" install
done
cargo build --release -q -p sdctl -p sdnet-tests --bin sdctl --bin sandbox-bench
SDCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/sdctl
BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/sandbox-bench

# Other jobs on this 2-core machine would otherwise steal the CPU (see baseline-perf.md).
echo -20 > /proc/self/autogroup 2>/dev/null || true

bench_init sb
EXTRA_NS+=("$HNS-dns")
bench_daemon
"$SDCTL" network create --subnet 10.200.0.0/16 bench >/dev/null
# The concurrent writers of the reads-under-load phase use a network of their own: a Linux
# bridge takes at most 1,024 ports, and `bench` has N of them already.
"$SDCTL" network create --subnet 10.203.0.0/16 benchload >/dev/null
"$SDCTL" run -d --name probe --network bench >/dev/null
RSS0=$(rss)

echo "== $N sandboxes through the API (create + attach + DNS listener; name checked at return)"
SB_IDLE_SECS=6 SB_LOAD_NETWORK=benchload "$BENCH" "$W/sock" bench "$N" "/proc/$DPID/root$W/run/netns/probe" s | tee "$OUT/sdnet-create.txt" &
BP=$!
# Peak RSS while creating (informational), and RSS once they all exist and sit idle (the
# target): sandbox-bench pauses 6 s after its last create (the daemon hands freed heap back
# to the system every 3 s).
peak=$RSS0
while kill -0 $BP 2>/dev/null && ! grep -q create_wall_s "$OUT/sdnet-create.txt" 2>/dev/null; do
  r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2
done
sleep 4
IDLE=$(rss)
wait $BP
RSS_PER=$(( (IDLE - RSS0) * 1024 / N ))
RSS_PEAK_PER=$(( (peak > IDLE ? peak - RSS0 : IDLE - RSS0) * 1024 / N ))

if [ "$MV_N" -gt 0 ]; then
  # The same API calls on a macvlan network: its parent is a veth of the daemon's namespace
  # (a NIC's stand-in); each endpoint is a macvlan made inside the sandbox.
  echo "== $MV_N sandboxes on a macvlan network"
  ip -n "$HNS" link add mvparent type veth peer name mvpeer
  ip -n "$HNS" link set mvparent up
  ip -n "$HNS" link set mvpeer up
  "$SDCTL" network create -d macvlan -o parent=mvparent --subnet 10.201.0.0/16 benchmv >/dev/null
  "$SDCTL" run -d --name probemv --network benchmv >/dev/null
  SB_WRITERS=0 "$BENCH" "$W/sock" benchmv "$MV_N" "/proc/$DPID/root$W/run/netns/probemv" m \
    | tee "$OUT/sdnet-create-macvlan.txt"
  "$SDCTL" rm -f probemv >/dev/null
  "$SDCTL" network rm benchmv >/dev/null
fi

if [ "$CNI_N" -gt 0 ]; then
  # The same API calls on a CNI network run by Debian's containernetworking-plugins (bridge
  # + host-local, leases in the work dir): every create execs the plugins. The daemon logs
  # each ADD with the time spent in plugin execs (cni_exec_ms): the CNI exec share.
  [ -x /usr/lib/cni/bridge ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins >/dev/null
  echo "== $CNI_N sandboxes on a CNI network (bridge + host-local plugins)"
  cat >"$W/benchcni.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "benchcni", "plugins": [
  {"type": "bridge", "bridge": "benchcni0", "isGateway": true,
   "ipam": {"type": "host-local", "dataDir": "$W/cni-leases", "ranges": [[{"subnet": "10.202.0.0/16"}]]}}]}
JSON
  "$SDCTL" network create -d cni --cni-conf "$W/benchcni.conflist" benchcni >/dev/null
  "$SDCTL" run -d --name probecni --network benchcni >/dev/null
  mark=$(grep -c 'CNI ADD' "$W/daemon.log" || true)
  SB_WRITERS=0 "$BENCH" "$W/sock" benchcni "$CNI_N" "/proc/$DPID/root$W/run/netns/probecni" c \
    | tee "$OUT/sdnet-create-cni.txt"
  grep 'CNI ADD' "$W/daemon.log" | tail -n +"$((mark + 1))" | grep -oE 'cni_exec_ms=[0-9.]+' \
    | cut -d= -f2 >"$OUT/cni-exec-ms.txt"
  "$SDCTL" rm -f probecni >/dev/null
  "$SDCTL" network rm benchcni >/dev/null
fi

echo "== DNS through 127.0.0.11 inside a sandbox vs the standalone resolver"
python3 - "$W/q.txt" <<'PY'
import random, sys
random.seed(42)
with open(sys.argv[1], "w") as f:
    for _ in range(100000):
        f.write(f"n{random.randrange(1000)} A\n")
PY
"$SDCTL" run -d --name client --network bench >/dev/null
for i in $(seq 0 999); do echo "{\"name\":\"n$i\",\"networks\":[{\"network\":\"bench\"}]}"; done >/dev/null
# 1000 names to ask for (cheap: no processes)
for i in $(seq 0 999); do "$SDCTL" run -d --name "n$i" --network bench >/dev/null; done
dp() { taskset -c 1 dnsperf "$@" -d "$W/q.txt" -l "$DUR" -c 4 -q 100 2>&1 | awk '/Queries per second/ {print $4}'; }
# The same names served by `sdctl dns serve` on loopback, answering as the client sandbox.
python3 - "$W/state.json" <<'PY'
import json, sys
sbs = [{"id": f"{i+1:064x}", "name": f"n{i}", "endpoints": [{"network": "bench", "ipv4": f"10.200.{(i+10)//256}.{(i+10)%256}"}]} for i in range(1000)]
sbs.append({"id": "f" * 64, "name": "client", "endpoints": [{"network": "bench", "ipv4": "10.200.99.99"}]})
json.dump({"networks": [{"id": "bench", "name": "bench"}], "sandboxes": sbs}, open(sys.argv[1], "w"))
PY
ip netns add "$HNS-dns"
ip -n "$HNS-dns" link set lo up
ip netns exec "$HNS-dns" taskset -c 0 "$SDCTL" dns serve --state "$W/state.json" --listen 127.0.0.10:53 \
  --as client --upstream 127.0.0.9 >"$W/serve.log" 2>&1 &
PIDS+=("$!")
sleep 1
# Alternating runs, median of DNS_REPS each (one dnsperf run varies by ±5 % here).
sb_runs=() sa_runs=()
for _ in $(seq "${DNS_REPS:-3}"); do
  sb_runs+=("$(ip netns exec "$HNS" nsenter --net="/proc/$DPID/root$W/run/netns/client" bash -c "$(declare -f dp); W=$W DUR=$DUR; dp -s 127.0.0.11 -p 53")")
  sa_runs+=("$(ip netns exec "$HNS-dns" bash -c "$(declare -f dp); W=$W DUR=$DUR; dp -s 127.0.0.10 -p 53")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.0f", v[int((NR + 1) / 2)]}'; }
QPS_SB=$(median "${sb_runs[@]}") QPS_SA=$(median "${sa_runs[@]}")
echo "in-sandbox QPS runs: ${sb_runs[*]}; standalone: ${sa_runs[*]}" | tee "$OUT/dns-runs.txt"

NV_MED="" NV_P99="" FLOOR=""
if [ "$NV_N" -gt 0 ]; then
  # netavark 1.4 drives iptables(-nft); Debian's packages.
  for pair in /usr/lib/podman/netavark:netavark /usr/lib/podman/aardvark-dns:aardvark-dns iptables:iptables; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "${pair%%:*}" ] || \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pair#*:}" >/dev/null 2>&1 || true
  done
  echo "== netavark $NV_N containers (shared/bench/netavark_timing.sh)"
  PREFIX=nvt$$ bash "$ANCHORS/netavark_timing.sh" "$NV_N" "$OUT/netavark" >"$OUT/netavark.log" 2>&1 || true
  S="$OUT/netavark/summary.txt"
  if [ -f "$S" ]; then
    # netavark setup + aardvark answering the new name ("ready_total"), and the kernel floor:
    # ip netns add + the compact ip -batch attach (phase Bg).
    stat() { awk -v p="$1" -v m="$2" -v k="$3" '$1 == p && $2 == m { for (i = 3; i <= NF; i++) if ($i ~ "^" k "=") { sub(k "=", "", $i); print $i; exit } }' "$S"; }
    NV_MED=$(stat A_setup ready_total median)
    NV_P99=$(stat A_setup ready_total p99)
    f1=$(stat Bg_floor netns_add median); f2=$(stat Bg_floor ip median)
    [ -n "$f1" ] && [ -n "$f2" ] && FLOOR=$(awk "BEGIN{printf \"%.2f\", $f1 + $f2}")
  else
    echo "netavark anchor did not run: see $OUT/netavark.log" >&2
  fi
fi

med=$(grep -oE 'median_ms=[0-9.]+' "$OUT/sdnet-create.txt" | head -1 | cut -d= -f2)
p99=$(grep -oE 'p99_ms=[0-9.]+' "$OUT/sdnet-create.txt" | head -1 | cut -d= -f2)
wall=$(grep -oE 'create_wall_s=[0-9.]+' "$OUT/sdnet-create.txt" | cut -d= -f2)
ready=$(grep -oE 'dns_ready_at_return=[0-9/]+' "$OUT/sdnet-create.txt" | cut -d= -f2)
field() { grep "^$1 " "$OUT/sdnet-create.txt" | grep -oE "$2=[0-9.]+" | cut -d= -f2; }
rm_med=$(field remove median_ms) rm_p99=$(field remove p99_ms)
ps_p99=$(field ps_under_load p99_ms) ps_med=$(field ps_under_load median_ms)
cc_med=$(grep '^create_[0-9]*_clients ' "$OUT/sdnet-create.txt" | grep -oE 'median_ms=[0-9.]+' | cut -d= -f2)
mv_med="" mv_p99="" mv_ready=""
if [ -f "$OUT/sdnet-create-macvlan.txt" ]; then
  mv_med=$(grep -oE 'median_ms=[0-9.]+' "$OUT/sdnet-create-macvlan.txt" | head -1 | cut -d= -f2)
  mv_p99=$(grep -oE 'p99_ms=[0-9.]+' "$OUT/sdnet-create-macvlan.txt" | head -1 | cut -d= -f2)
  mv_ready=$(grep -oE 'dns_ready_at_return=[0-9/]+' "$OUT/sdnet-create-macvlan.txt" | cut -d= -f2)
fi
cni_med="" cni_p99="" cni_ready="" cni_exec=""
if [ -f "$OUT/sdnet-create-cni.txt" ]; then
  cni_med=$(grep -oE 'median_ms=[0-9.]+' "$OUT/sdnet-create-cni.txt" | head -1 | cut -d= -f2)
  cni_p99=$(grep -oE 'p99_ms=[0-9.]+' "$OUT/sdnet-create-cni.txt" | head -1 | cut -d= -f2)
  cni_ready=$(grep -oE 'dns_ready_at_return=[0-9/]+' "$OUT/sdnet-create-cni.txt" | cut -d= -f2)
  cni_exec=$(sort -g "$OUT/cni-exec-ms.txt" | awk '{v[NR] = $1} END {if (NR) printf "%.2f", v[int((NR + 1) / 2)]}')
fi
{
  echo "# sandboxes benchmark — $(date -u +%F) — $(uname -r) — $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) — sdctl $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
  echo
  echo "| what | sdnet | target | anchor |"
  echo "|---|---|---|---|"
  ratio() { [ -n "$2" ] && awk "BEGIN{printf \" (%.2f×)\", $1 / $2}"; }
  echo "| create + attach + DNS ready, median (ms) | $med | ≤ 10 | netavark setup + aardvark ready: ${NV_MED:-n/a}$(ratio "$med" "$NV_MED"); ip-batch floor (netns add + attach, no DNS): ${FLOOR:-n/a} |"
  echo "| same, p99 (ms) | $p99 | ≤ 50 | netavark: ${NV_P99:-n/a}$(ratio "$p99" "$NV_P99") |"
  [ -n "$mv_med" ] && echo "| same on a macvlan network ($MV_N), median / p99 (ms); names ready | $mv_med / $mv_p99; $mv_ready | | the bridge above |"
  [ -n "$cni_med" ] && echo "| same on a CNI network, bridge + host-local plugins ($CNI_N), median / p99 (ms); names ready | $cni_med / $cni_p99; $cni_ready | | the bridge above; plugin execs per create, median: ${cni_exec:-n/a} ms |"
  echo "| rm, median / p99 (ms) | $rm_med / $rm_p99 | ≤ 10 (median) | |"
  echo "| \`ps\` (GET /v1/sandboxes) while 4 clients create: median / p99 (ms) | ${ps_med:-n/a} / ${ps_p99:-n/a} | p99 ≤ 20 | creates meanwhile: median ${cc_med:-n/a} ms |"
  echo "| $N sandboxes, wall (s) | $wall | ≤ 20 (1,000) | |"
  echo "| name answers when the call returns | $ready | all | netavark: often not (research/netavark-timing.md) |"
  echo "| daemon RSS per idle sandbox (bytes) | $RSS_PER (peak while creating: $RSS_PEAK_PER) | ≤ 32768 | |"
  echo "| DNS QPS via 127.0.0.11 in a sandbox / standalone | $QPS_SB / $QPS_SA ($(awk "BEGIN{printf \"%.0f\", 100*$QPS_SB/$QPS_SA}") %) | ≥ 90 % | |"
} | tee "$OUT/results.md"
[ -f "$OUT/netavark/summary.txt" ] && { echo; echo "netavark summary: $OUT/netavark/summary.txt"; }
echo "results: $OUT"
