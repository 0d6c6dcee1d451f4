#!/usr/bin/env bash
# Podman's DNS readiness: the real netavark sets up N containers with `-a` pointing at sdctl
# (as aardvark-dns, a symlink) and then at the real aardvark-dns, in the same run; right after
# each `netavark setup` returns, the new container asks for its own name. Reports what the first
# query got (right address / wrong answer / no answer) and how long until the right answer.
# Everything runs in a throw-away network namespace (its bridge, iptables rules and DNS servers
# too); no packet leaves it. See tests/bench/README.md. Run as root:
#
#   tests/bench/netavark.sh              # N=200
#   N=50 tests/bench/netavark.sh
#
# Knobs: N (containers per server, 200), NETAVARK (/usr/lib/podman/netavark; any version),
# AARDVARK (/usr/lib/podman/aardvark-dns), SDCTL (default: cargo build --release -p sdctl),
# OUT (results dir, default a new /tmp/sdnvready-out.*), NETAVARK_FW (netavark's firewall
# driver, iptables; netavark 2.x has only nftables).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=${N:-200}
NETAVARK=${NETAVARK:-/usr/lib/podman/netavark}
AARDVARK=${AARDVARK:-/usr/lib/podman/aardvark-dns}
SDCTL=${SDCTL:-}

say() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
[[ $N =~ ^[1-9][0-9]*$ ]] && [ "$N" -le 2000 ] || die "N must be 1..2000"
for t in python3 ip nsenter iptables; do command -v "$t" >/dev/null || die "$t missing"; done
[ -x "$NETAVARK" ] || die "$NETAVARK missing (apt-get install netavark)"
[ -x "$AARDVARK" ] || die "$AARDVARK missing (apt-get install aardvark-dns)"
if [ -z "$SDCTL" ]; then
  say "building sdctl (release)"
  (cd "$ROOT" && cargo build --release -p sdctl >&2)
  SDCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/sdctl
fi
[ -x "$SDCTL" ] || die "$SDCTL missing"

OUT=${OUT:-$(mktemp -d /tmp/sdnvready-out.XXXXXX)}
mkdir -p "$OUT"
W=$(mktemp -d /tmp/sdnvready.XXXXXX)
PREFIX=sdnv$$
HNS=$PREFIX-h
cleanup() {
  local ns
  # the prober tears its containers down itself; these are what an abort left
  for ns in $(ip netns list 2>/dev/null | awk -v p="$PREFIX-" 'index($1, p) == 1 {print $1}'); do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$W/bin"
ln -s "$(readlink -f "$SDCTL")" "$W/bin/aardvark-dns"
ip netns add "$HNS"
ip -n "$HNS" link set lo up
ip -n "$HNS" route add unreachable default

say "N=$N, $("$NETAVARK" --version), $("$AARDVARK" --version 2>/dev/null || echo aardvark-dns ?), sdctl $(git -C "$ROOT" rev-parse --short HEAD)"
nsenter --net="/run/netns/$HNS" python3 "$HERE/lib/netavark_ready.py" "$N" "$NETAVARK" "$W" "$PREFIX" \
  "sdctl=$W/bin/aardvark-dns" "aardvark-dns=$AARDVARK" >"$OUT/ready.tsv"
# the host namespace goes last: the servers in it have ended with their last teardown
ip netns del "$HNS"

python3 - "$OUT/ready.tsv" "$N" "$("$NETAVARK" --version)" >"$OUT/results.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")
print(f"# netavark setup → name answers ({sys.argv[3]}, N={sys.argv[2]} per server)\n")
print("| server | first query right | wrong answer | no answer (1 s) | first reply p50 / p99 ms | ready p50 / p99 / max ms | setup p50 ms |")
print("|---|---|---|---|---|---|---|")
for server in dict.fromkeys(r["server"] for r in rows):
    rs = [r for r in rows if r["server"] == server]
    ok = sum(r["first"] == "ok" for r in rs)
    lost = sum(r["first"] == "lost" for r in rs)
    fr = [float(r["first_reply_ms"]) for r in rs if r["first_reply_ms"] != "NA"]
    rd = [float(r["ready_ms"]) for r in rs if r["ready_ms"] != "NA"]
    never = len(rs) - len(rd)
    st = [float(r["setup_ms"]) for r in rs]
    ready = f"{pct(rd, 50):.2f} / {pct(rd, 99):.2f} / {max(rd):.2f}" if rd else "NA"
    if never:
        ready += f" ({never} never)"
    print(f"| {server} | {ok}/{len(rs)} | {len(rs) - ok - lost} | {lost} | {pct(fr, 50):.3f} / {pct(fr, 99):.3f} | {ready} | {pct(st, 50):.1f} |")
print("\nfirst query: sent on a socket opened beforehand in the container, as soon as netavark returned;"
      " ready: from netavark returning to the right address (queries every 0.5 ms after the first).")
PY
cat "$OUT/results.md"
say "results: $OUT"
