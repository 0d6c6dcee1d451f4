#!/usr/bin/env bash
# DNS benchmark: `sdctl dns serve` (and `sdctl aardvark-dns`, sdctl-aardvark: the same
# aardvark config directory as aardvark-dns) against dnsmasq, unbound and aardvark-dns, all answering the
# same names in a throw-away network namespace (loopback only), loaded with dnsperf. The host
# zone (sdctl-hostzone: `sdctl daemon --host-dns` with sandboxes made through its API) is
# measured beside BIND serving the same zone from a file written from its AXFR (bind-zonefile),
# with AXFR time and size and the cost of one change to the zone. The floor-*
# servers (resolver/examples/udp_floor.rs) echo every query with no work: their CPU per query is
# what the kernel's UDP path alone costs. See tests/bench/README.md. Run as root:
#
#   tests/bench/dns.sh                          # full run (~22 min)
#   DUR=3 REPS=1 SIZES=1000 tests/bench/dns.sh  # quick run (~3 min)
#
# Knobs (environment): DUR (s per run, 10), REPS (3 for A, 2 for the other mixes), SIZES
# ("1000 100000"), ONLY (servers, "sdctl sdctl-nocache sdctl-aardvark sdctl-hostzone bind-zonefile
# dnsmasq unbound aardvark floor-gso floor-mmsg"; also floor-sendto, floor-uring), OUT (results dir, default a new /tmp/sdbench-out.*), SDCTL
# (binary; default: cargo build --release -p sdctl), FLOOR (udp_floor binary; default: cargo build
# --release -p sdnet-resolver --example udp_floor),
# AARDVARK_ALL=1 (aardvark at every size, not only ≤ 1000 names), CLIENTS (4), OUTSTANDING (100),
# NX_NAMES (distinct unknown names in the 10 % mix, 1000), PRIO (autogroup nice, -20),
# SDCTL_THREADS (1), SDCTL_REV (label for the binary's revision), KEEP=1 (keep the work dir),
# AARDVARK_BIN (the aardvark-dns to compare, /usr/lib/podman/aardvark-dns),
# HZ_SANDBOXES (sandboxes the host zone's names are spread over, 1000), XFR_REPS (3), CHANGES (5).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ANCHORS=${ANCHORS:-/work/shared/bench/anchors.sh}
REPORT_AWK=$HERE/lib/report.awk

DUR=${DUR:-10}
REPS=${REPS:-}
SIZES=${SIZES:-1000 100000}
ONLY=${ONLY:-sdctl sdctl-nocache sdctl-aardvark sdctl-hostzone bind-zonefile dnsmasq unbound aardvark floor-gso floor-mmsg}
FLOORS="floor-gso floor-mmsg floor-sendto floor-uring" # zero-work echo servers: the kernel's floor
FLOOR=${FLOOR:-}
AARDVARK_ALL=${AARDVARK_ALL:-0}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
NX_NAMES=${NX_NAMES:-1000}
PRIO=${PRIO:--20}
SDCTL_THREADS=${SDCTL_THREADS:-1}
KEEP=${KEEP:-0}
HZ_SANDBOXES=${HZ_SANDBOXES:-1000} # a Linux bridge takes at most 1,024 ports
XFR_REPS=${XFR_REPS:-3}
CHANGES=${CHANGES:-5}
HZ_ALIASES=64 # aliases per sandbox and network the API allows (MAX_ALIASES)
QUERIES=100000 # lines per query file

REPS_A=${REPS:-3}
REPS_OTHER=${REPS:-2}

say() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "error: $*"; exit 1; }
has() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }
has_floor() { local f; for f in $FLOORS; do has "$f" && return 0; done; return 1; }
has_hz() { has sdctl-hostzone || has bind-zonefile; } # BIND's zone file comes from the daemon's AXFR

# ---------------------------------------------------------------------------------------------
# Stage 1 (caller's session): checks, install, build; then re-run in a session of our own so
# that raising the autogroup priority touches only the benchmark and its servers.
if [ "${_SDBENCH_INNER:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || die "run as root (network namespaces, taskset, autogroup)"
  for v in DUR REPS_A REPS_OTHER CLIENTS OUTSTANDING NX_NAMES SDCTL_THREADS HZ_SANDBOXES XFR_REPS CHANGES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
  done
  for n in $SIZES; do [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 1000000 ] || die "bad size '$n'"; done
  for s in $ONLY; do
    case $s in sdctl | sdctl-nocache | sdctl-aardvark | sdctl-hostzone | bind-zonefile | dnsmasq | unbound | aardvark | floor-gso | floor-mmsg | floor-sendto | floor-uring) ;;
      *) die "unknown server '$s' in ONLY" ;; esac
  done
  [ "$HZ_SANDBOXES" -le 1000 ] || die "HZ_SANDBOXES: at most 1000 (sandboxes on one bridge)"
  missing=0
  for t in dnsperf dnsmasq unbound dig taskset setsid timeout ip; do
    command -v "$t" >/dev/null 2>&1 || missing=1
  done
  if [ "$missing" = 1 ]; then
    say "installing dnsperf, dnsmasq, unbound, aardvark-dns, dig, kdig ($ANCHORS install)"
    "$ANCHORS" install
  fi
  if has_hz; then
    for pair in named:bind9 curl:curl nft:nftables; do
      command -v "${pair%%:*}" >/dev/null 2>&1 ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair#*:}" >/dev/null ||
        die "cannot install ${pair#*:}"
    done
  fi
  if [ -z "${SDCTL:-}" ]; then
    say "building sdctl (cargo build --release -p sdctl)"
    (cd "$ROOT" && cargo build --release -p sdctl)
    SDCTL=${CARGO_TARGET_DIR:-$ROOT/target}/release/sdctl
    case $SDCTL in /*) ;; *) SDCTL=$ROOT/$SDCTL ;; esac
  fi
  [ -x "$SDCTL" ] || die "no sdctl binary at $SDCTL"
  SDCTL=$(readlink -f "$SDCTL")
  if has_floor; then
    if [ -z "$FLOOR" ]; then
      say "building udp_floor (cargo build --release -p sdnet-resolver --example udp_floor)"
      (cd "$ROOT" && cargo build --release -p sdnet-resolver --example udp_floor)
      FLOOR=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/udp_floor
      case $FLOOR in /*) ;; *) FLOOR=$ROOT/$FLOOR ;; esac
    fi
    [ -x "$FLOOR" ] || die "no udp_floor binary at $FLOOR"
    FLOOR=$(readlink -f "$FLOOR")
  fi
  export SDCTL FLOOR _SDBENCH_INNER=1
  # Non-interactive bash keeps background jobs in its process group, so setsid(1) does not
  # fork and $! is the benchmark itself; signals to us are passed on so it can clean up.
  setsid -w "$BASH" "$0" "$@" &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM HUP
  rc=0
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child" || rc=$?; done
  exit "$rc"
fi

# ---------------------------------------------------------------------------------------------
# Stage 2: the benchmark, in its own session.
NS=sdbench-$$
W=$(mktemp -d /tmp/sdbench-work.XXXXXX)
chmod 755 "$W" # dnsmasq reads its hosts file after dropping privileges
OUT=${OUT:-$(mktemp -d /tmp/sdbench-out.XXXXXX)}
mkdir -p "$OUT/raw"
OUT=$(readlink -f "$OUT")
TSV=$OUT/results.tsv
MD=$OUT/results.md

SRV_PIDS=()   # every server process we started (sdctl, upstream unbound, floors, anchors, named)
DP_PID=""     # running load generator
UP_PID=""     # upstream unbound of sdctl
declare -A S_ADDR S_PORT S_PID S_SRC S_NS S_QDIR
HZ_NS=$NS-hz  # the host-zone daemon's namespace (its firewall stays out of the others' path)
HZ_PID=""     # the host-zone daemon
HZ_DIR=$W/hz  # its state, run dir and socket

kill_wait() { # PID...: TERM, up to 3 s, then KILL
  local p i
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for i in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}

stop_servers() {
  local pids=("${SRV_PIDS[@]}") line
  if [ -f "$W/anchors/anchors.pids" ]; then
    while read -r line; do set -- $line; pids+=("$4"); done <"$W/anchors/anchors.pids"
    "$ANCHORS" stop "$W/anchors" || true
  fi
  [ ${#pids[@]} -eq 0 ] || kill_wait "${pids[@]}"
  SRV_PIDS=()
  UP_PID=""
  S_ADDR=() S_PORT=() S_PID=() S_SRC=() S_NS=() S_QDIR=()
  hz_stop
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  [ -z "$DP_PID" ] || kill_wait "$DP_PID"
  stop_servers
  ip netns del "$NS" 2>/dev/null
  ip netns del "$HZ_NS" 2>/dev/null
  if [ "$KEEP" = 1 ]; then say "work dir kept: $W"; else rm -rf "$W"; fi
  [ "$rc" = 0 ] || say "failed (exit $rc); partial results in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

X() { ip netns exec "$NS" "$@"; } # foreground only ($! of "X … &" is a subshell)

# ---- /proc accounting (bash builtins only, so nothing forks between two readings) -----------
TICK=$(getconf CLK_TCK)
proc_ticks() { # PID -> PT_U PT_S: utime, stime of the process (all threads), in clock ticks
  local line f
  PT_U=0 PT_S=0
  [ -n "$1" ] && read -r line <"/proc/$1/stat" 2>/dev/null || return 0
  read -r -a f <<<"${line##*) }"
  PT_U=${f[11]} PT_S=${f[12]}
}
children_ticks() { # cutime+cstime of this shell: CPU of every child it has reaped
  local line f
  read -r line <"/proc/$$/stat"
  read -r -a f <<<"${line##*) }"
  CHILD_TICKS=$((f[13] + f[14]))
}
cpu_idle() { # idle+iowait and softirq ticks of cpu0+cpu1 -> IDLE SOFTIRQ
  # Busy time is taken as wall time minus idle: with NOHZ the idle figures are exact, while
  # the user/system/softirq fields are sampled per tick (and miss short bursts at half load).
  local name u n s i w irq sirq st
  IDLE=0 SOFTIRQ=0
  while read -r name u n s i w irq sirq st _; do
    case $name in cpu0 | cpu1) IDLE=$((IDLE + i + w)) SOFTIRQ=$((SOFTIRQ + sirq)) ;; esac
  done </proc/stat
}
status_kib() { awk -v k="$2:" '$1==k{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
ticks_s() { awk -v t="$1" -v h="$TICK" 'BEGIN{printf "%.2f", t/h}'; }

# ---- data ---------------------------------------------------------------------------------
# Name i (cI.test) has address 10.(88+i/65536).((i/256)%256).(i%256); the same as the
# baseline's 10.88.(i/256).(i%256) up to 65535 names.
gen_data() { # N DIR
  local n=$1 d=$2
  mkdir -p "$d"
  awk -v n="$n" 'BEGIN{for(i=1;i<=n;i++) printf "10.%d.%d.%d c%d.test\n", 88+int(i/65536), int(i/256)%256, i%256, i}' >"$d/hosts"
  awk -v n="$n" 'BEGIN{
    z = sprintf("%052d", 0)
    printf "{\"networks\": [{\"id\": \"bench\", \"name\": \"test\"}],\n \"sandboxes\": [\n"
    for (i = 1; i <= n; i++)
      printf "  {\"id\": \"5d%010x%s\", \"name\": \"c%d\", \"endpoints\": [{\"network\": \"bench\", \"ipv4\": \"10.%d.%d.%d\"}]},\n", i, z, i, 88+int(i/65536), int(i/256)%256, i%256
    printf "  {\"id\": \"bc0000000000%s\", \"name\": \"bench-client\", \"endpoints\": [{\"network\": \"bench\", \"ipv4\": \"127.0.0.200\"}]}\n ]}\n", z
  }' >"$d/state.json"
  # Query files: 100k lines, fixed seeds (mawk's rand() after srand(seed) is deterministic).
  awk -v n="$n" -v q=$QUERIES 'BEGIN{srand(1); for(k=1;k<=q;k++) printf "c%d.test A\n", int(rand()*n)+1}' >"$d/q-a.txt"
  awk -v n="$n" -v q=$QUERIES 'BEGIN{srand(2); for(k=1;k<=q;k++){i=int(rand()*n)+1; printf "%d.%d.%d.10.in-addr.arpa PTR\n", i%256, int(i/256)%256, 88+int(i/65536)}}' >"$d/q-ptr.txt"
  awk -v n="$n" -v q=$QUERIES -v nx="$NX_NAMES" 'BEGIN{srand(3); for(k=1;k<=q;k++){
      if (k%10==0) printf "nx%d.test A\n", int(rand()*nx)+1; else printf "c%d.test A\n", int(rand()*n)+1}}' >"$d/q-nx.txt"
}
addr_of() { awk -v i="$1" 'BEGIN{printf "10.%d.%d.%d", 88+int(i/65536), int(i/256)%256, i%256}'; }

# ---- servers ------------------------------------------------------------------------------
set_prio() { echo "$PRIO" >"/proc/$1/autogroup" 2>/dev/null || say "warning: cannot set autogroup nice of PID $1"; }

dig_q() { # SERVER NAME TYPE [dig options...]
  local s=$1 name=$2 type=$3; shift 3
  local src=()
  [ -z "${S_SRC[$s]:-}" ] || src=(-b "${S_SRC[$s]}")
  ip netns exec "${S_NS[$s]:-$NS}" timeout 5 dig +time=1 +tries=1 "${src[@]}" @"${S_ADDR[$s]}" -p "${S_PORT[$s]}" "$name" "$type" "$@" 2>/dev/null || true
}

wait_ready() { # SERVER N: c1/cN A and PTR answer correctly (up to 120 s, for big name tables)
  local s=$1 n=$2 a1 an i
  a1=$(addr_of 1); an=$(addr_of "$n")
  for i in $(seq 240); do
    kill -0 "${S_PID[$s]}" 2>/dev/null || die "$s (PID ${S_PID[$s]}) exited; see $W"
    if [ "$(dig_q "$s" c1.test A +short)" = "$a1" ] && [ "$(dig_q "$s" "c$n.test" A +short)" = "$an" ] &&
      [ "$(dig_q "$s" "$(echo "$an" | awk -F. '{print $4"."$3"."$2"."$1".in-addr.arpa"}')" PTR +short)" = "c$n.test." ]; then
      say "$s answers (c1, c$n, PTR) after ~$((i / 2)) s"
      return 0
    fi
    sleep 0.5
  done
  die "$s does not answer c1.test/c$n.test/PTR correctly; see $W"
}

wait_ready_floor() { # SERVER: an echo server's reply is NOERROR with no answers
  local s=$1 i
  for i in $(seq 20); do
    kill -0 "${S_PID[$s]}" 2>/dev/null || die "$s (PID ${S_PID[$s]}) exited; see $W"
    if dig_q "$s" c1.test A +noall +comments | grep -q 'status: NOERROR'; then
      say "$s answers (NOERROR echo) after ~$((i / 2)) s"
      return 0
    fi
    sleep 0.5
  done
  die "$s does not answer NOERROR; see $W"
}

check_nx_soa() { # SERVER: an unknown name gives NXDOMAIN with an SOA in authority
  local s=$1 out
  out=$(dig_q "$s" nx1.test A +noall +comments +authority)
  grep -q 'status: NXDOMAIN' <<<"$out" && grep -q 'IN[[:space:]]*SOA' <<<"$out" ||
    die "$s: nx1.test is not NXDOMAIN with SOA: $out"
}

start_upstream() { # unbound on 127.0.0.11:5311: zone test. with only an SOA -> NXDOMAIN + SOA
  cat >"$W/upstream.conf" <<EOF
server:
  interface: 127.0.0.11
  port: 5311
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$W"
  pidfile: ""
  use-syslog: no
  logfile: ""
  num-threads: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  minimal-responses: yes
  local-zone: "test." static
  local-data: "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 3600"
remote-control:
  control-enable: no
EOF
  # not via X(): a backgrounded function would leave $! pointing at a subshell
  ip netns exec "$NS" taskset -c 0 unbound -d -c "$W/upstream.conf" >"$W/upstream.log" 2>&1 &
  UP_PID=$!
  SRV_PIDS+=("$UP_PID")
  S_ADDR[upstream]=127.0.0.11 S_PORT[upstream]=5311 S_PID[upstream]=$UP_PID
  set_prio "$UP_PID"
  local i
  for i in $(seq 50); do
    dig_q upstream nx1.test A +noall +comments | grep -q 'status: NXDOMAIN' && break
    sleep 0.1
  done
  check_nx_soa upstream
}

start_sdctl() { # NAME ADDR PORT DIR [extra args]
  local name=$1 addr=$2 port=$3 d=$4; shift 4
  ip netns exec "$NS" taskset -c 0 "$SDCTL" dns serve --state "$d/state.json" --listen "$addr:$port" --as bench-client \
    --upstream 127.0.0.11:5311 --threads "$SDCTL_THREADS" "$@" >"$W/$name.log" 2>&1 &
  S_PID[$name]=$!
  SRV_PIDS+=("$!")
  S_ADDR[$name]=$addr S_PORT[$name]=$port S_SRC[$name]=""
  set_prio "$!"
}

start_sdctl_aardvark() { # DIR: `sdctl aardvark-dns` on the config aardvark-dns gets (anchors.sh),
  # listening on 127.0.0.13:5313; like aardvark, nothing forwarded (AARDVARK_NO_PROXY).
  local d=$1 c="$W/sdctl-aardvark"
  rm -rf "$c"
  mkdir -p "$c"
  {
    echo "127.0.0.13"
    awk '{printf "%064x %s  %s\n", NR, $1, $2}' "$d/hosts"
    printf "%064x 127.0.0.200  benchclient\n" 999999
  } >"$c/benchnet"
  # `run` forks; the parent returns once the child listens, its pid in aardvark.pid
  AARDVARK_NO_PROXY=1 ip netns exec "$NS" taskset -c 0 "$SDCTL" aardvark-dns --config "$c" -p 5313 run \
    >"$W/sdctl-aardvark.log" 2>&1
  S_PID[sdctl-aardvark]=$(cat "$c/aardvark.pid")
  SRV_PIDS+=("${S_PID[sdctl-aardvark]}")
  S_ADDR[sdctl-aardvark]=127.0.0.13 S_PORT[sdctl-aardvark]=5313 S_SRC[sdctl-aardvark]=127.0.0.200
  set_prio "${S_PID[sdctl-aardvark]}"
}

start_floor() { # NAME ADDR PORT MODE: resolver/examples/udp_floor.rs
  local name=$1 addr=$2 port=$3 mode=$4
  ip netns exec "$NS" taskset -c 0 "$FLOOR" "$addr:$port" --mode "$mode" >"$W/$name.log" 2>&1 &
  S_PID[$name]=$!
  SRV_PIDS+=("$!")
  S_ADDR[$name]=$addr S_PORT[$name]=$port S_SRC[$name]=""
  set_prio "$!"
}

start_all() { # N DIR
  local n=$1 d=$2 name addr port pid src
  local aard=${AARDVARK_BIN:-/usr/lib/podman/aardvark-dns}
  if ! has aardvark || { [ "$n" -gt 1000 ] && [ "$AARDVARK_ALL" != 1 ]; }; then aard=/nonexistent; fi
  if has dnsmasq || has unbound || [ "$aard" != /nonexistent ]; then
    rm -rf "$W/anchors"
    while read -r name addr port pid src; do
      [ -n "$name" ] || continue
      S_ADDR[$name]=$addr S_PORT[$name]=$port S_PID[$name]=$pid S_SRC[$name]=${src:-}
      set_prio "$pid"
    done < <(AARDVARK=$aard "$ANCHORS" start "$NS" "$d/hosts" "$W/anchors")
  else
    X ip link set lo up
  fi
  if has sdctl || has sdctl-nocache; then
    start_upstream
    has sdctl && start_sdctl sdctl 127.0.0.10 5310 "$d"
    has sdctl-nocache && start_sdctl sdctl-nocache 127.0.0.12 5312 "$d" --cache-size 0
  fi
  has sdctl-aardvark && start_sdctl_aardvark "$d"
  if has_hz; then
    if [ "$n" -le $((HZ_SANDBOXES * (HZ_ALIASES + 1))) ]; then
      hz_start "$n"
      has bind-zonefile && start_bind_zonefile
    else
      say "host zone: $n names is more than $HZ_SANDBOXES sandboxes × $((HZ_ALIASES + 1)) names; not started"
    fi
  fi
  has floor-sendto && start_floor floor-sendto 127.0.0.20 5320 sendto
  has floor-uring && start_floor floor-uring 127.0.0.23 5323 uring
  has floor-mmsg && start_floor floor-mmsg 127.0.0.21 5321 mmsg
  has floor-gso && start_floor floor-gso 127.0.0.22 5322 gso
  local comm
  for name in sdctl sdctl-nocache sdctl-aardvark sdctl-hostzone bind-zonefile dnsmasq unbound aardvark $FLOORS; do
    has "$name" || continue
    [ -n "${S_PID[$name]:-}" ] || { say "$name not started at $n names (see README)"; continue; }
    case $name in
      floor-*) wait_ready_floor "$name" ;;
      sdctl-hostzone | bind-zonefile) hz_wait_ready "$name" "$n" ;;
      *) wait_ready "$name" "$n" ;;
    esac
    # the PID we measure must be the server itself, not a wrapper
    comm=$(cat "/proc/${S_PID[$name]}/comm" 2>/dev/null || true)
    case "$name:$comm" in sdctl*:sdctl | bind-zonefile:named | dnsmasq:dnsmasq | unbound:unbound | aardvark:aardvark-dns | floor-*:udp_floor) ;;
      *) die "PID ${S_PID[$name]} of $name is '$comm', not the server" ;; esac
  done
  for name in sdctl sdctl-nocache; do
    [ -z "${S_PID[$name]:-}" ] || check_nx_soa "$name"
  done
  if [ -n "$HZ_PID" ]; then
    hz_xfr "$n"
    hz_changes "$n"
  fi
}

# ---- the host zone (sdctl-hostzone) and BIND serving the same zone from a file (bind-zonefile)
# The daemon runs in a namespace of its own ($HZ_NS: its firewall hooks stay out of the other
# servers' path), and so does named, so both host-zone servers see the same kernel path.
# Names: network `test` (10.88.0.0/16), S = min(N, HZ_SANDBOXES) sandboxes c1..cS made through
# the API, sandbox j also carrying the aliases c(S*k+j) for k ≥ 1 up to N, so c1..cN all exist
# as `ci.test.sdnet.` (plus each sandbox's short ID) and the reverse zone has S PTR records.
HZ_ADDR=127.0.0.14 HZ_PORT=5314 HZ_METRICS=127.0.0.15:9315
BZ_PORT=5316 # bind-zonefile on 127.0.0.1 (named listens on interface addresses only)
BS_PORT=5317 # a BIND secondary, briefly, to time its transfer
REV_ZONE=88.10.in-addr.arpa.
HZ_TSV="" # AXFR and change figures, one row each

hz() { SDNET_SOCKET=$HZ_DIR/sock "$SDCTL" "$@"; }
hz_dig() { ip netns exec "$HZ_NS" taskset -c 1 timeout 30 dig +time=5 +tries=1 @"$HZ_ADDR" -p "$HZ_PORT" "$@" 2>/dev/null || true; }
hz_serial() { hz_dig sdnet. SOA +short | awk '{print $3}'; }
hz_metric() { # -> "SUM COUNT" of the host zone's rebuild histogram
  ip netns exec "$HZ_NS" curl -sf --max-time 5 "http://$HZ_METRICS/metrics" |
    awk '$1=="sdnet_hostdns_rebuild_duration_seconds_sum"{s=$2} $1=="sdnet_hostdns_rebuild_duration_seconds_count"{c=$2} END{print s+0, c+0}'
}

hz_stop() { # the daemon by PID, then `daemon --cleanup` (sandbox namespaces, keeper, tables)
  [ -n "$HZ_PID" ] || return 0
  kill_wait "$HZ_PID"
  HZ_PID=""
  ip netns exec "$HZ_NS" "$SDCTL" daemon --cleanup --state-dir "$HZ_DIR/state" --run-dir "$HZ_DIR/run" \
    --socket "$HZ_DIR/sock" --etc-netns-dir "$HZ_DIR/etc" --no-netns-links >>"$W/sdctl-hostzone.log" 2>&1 ||
    say "warning: daemon --cleanup failed; see $W/sdctl-hostzone.log"
  ip netns del "$HZ_NS" 2>/dev/null || true
}

hz_populate() { # N: the sandboxes and aliases above, through the API (4 clients at once)
  local n=$1 s per w
  s=$HZ_SANDBOXES; [ "$n" -ge "$s" ] || s=$n
  per=$(((n + s - 1) / s))
  [ "$per" -le $((HZ_ALIASES + 1)) ] || return 1
  hz network create --subnet 10.88.0.0/16 test >/dev/null
  local pids=()
  for w in 0 1 2 3; do
    (
      local j k i args
      for ((j = 1 + w; j <= s; j += 4)); do
        args=(run -d --name "c$j" --network test)
        for ((k = 1; k < per; k++)); do
          i=$((s * k + j))
          [ "$i" -le "$n" ] && args+=(--network-alias "c$i")
        done
        hz "${args[@]}" >/dev/null || { say "sdctl ${args[*]:0:4} failed"; exit 1; }
      done
    ) &
    pids+=("$!")
  done
  local rc=0 p
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

hz_zone_files() { # DIR: each zone's AXFR as a zone file (the closing SOA left out)
  local d=$1 z
  for z in sdnet. $REV_ZONE; do
    hz_dig "$z" AXFR +nocomments +nocmd +nostats | awk '$4=="SOA" && seen++ {next} NF && $1 !~ /^;/' >"$d/${z%.}.zone"
  done
}

hz_queries() { # N DIR: the mixes of gen_data under the zone, PTR over the reverse zone's names
  local n=$1 d=$2
  awk -v n="$n" -v q=$QUERIES 'BEGIN{srand(1); for(k=1;k<=q;k++) printf "c%d.test.sdnet A\n", int(rand()*n)+1}' >"$d/q-a.txt"
  awk '$4=="PTR"{print $1}' "$d/${REV_ZONE%.}.zone" >"$d/ptr-names"
  awk -v q=$QUERIES 'NR==FNR{p[NR]=$1; m=NR; next} END{srand(2); for(k=1;k<=q;k++) printf "%s PTR\n", p[int(rand()*m)+1]}' "$d/ptr-names" /dev/null >"$d/q-ptr.txt"
  awk -v n="$n" -v q=$QUERIES -v nx="$NX_NAMES" 'BEGIN{srand(3); for(k=1;k<=q;k++){
      if (k%10==0) printf "nx%d.test.sdnet A\n", int(rand()*nx)+1; else printf "c%d.test.sdnet A\n", int(rand()*n)+1}}' >"$d/q-nx.txt"
}

hz_start() { # N: the daemon with the zone's names; its AXFR, zone files and query files
  local n=$1 i
  ip netns add "$HZ_NS"
  ip -n "$HZ_NS" link set lo up
  rm -rf "$HZ_DIR"
  mkdir -p "$HZ_DIR/q"
  echo "nameserver 127.0.0.11" >"$HZ_DIR/resolv.conf" # nothing is forwarded here
  ip netns exec "$HZ_NS" taskset -c 0 "$SDCTL" daemon --state-dir "$HZ_DIR/state" --run-dir "$HZ_DIR/run" \
    --socket "$HZ_DIR/sock" --etc-netns-dir "$HZ_DIR/etc" --no-netns-links --resolv-conf "$HZ_DIR/resolv.conf" \
    --resync-interval 1h --host-dns "$HZ_ADDR:$HZ_PORT" --metrics-addr "$HZ_METRICS" >"$W/sdctl-hostzone.log" 2>&1 &
  HZ_PID=$!
  set_prio "$HZ_PID"
  for i in $(seq 100); do hz ps >/dev/null 2>&1 && break; sleep 0.1; done
  hz ps >/dev/null 2>&1 || die "the host-zone daemon does not answer on $HZ_DIR/sock; see $W/sdctl-hostzone.log"
  local t0=$EPOCHREALTIME
  hz_populate "$n" || die "could not make the host zone's $n names; see $W/sdctl-hostzone.log"
  say "host zone: $n names made through the API in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
  hz_zone_files "$HZ_DIR/q"
  hz_queries "$n" "$HZ_DIR/q"
  if has sdctl-hostzone; then
    S_ADDR[sdctl-hostzone]=$HZ_ADDR S_PORT[sdctl-hostzone]=$HZ_PORT S_PID[sdctl-hostzone]=$HZ_PID
    S_SRC[sdctl-hostzone]="" S_NS[sdctl-hostzone]=$HZ_NS S_QDIR[sdctl-hostzone]=$HZ_DIR/q
  fi
}

named_conf() { # DIR PORT ZONES...: a named.conf (zones as `NAME TYPE FILE [PRIMARY]`)
  local d=$1 port=$2 z; shift 2
  cat <<CONF
options {
  directory "$d";
  listen-on port $port { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  dnssec-validation no;
  notify no;
  pid-file none;
  session-keyfile none;
  managed-keys-directory "$d";
};
controls { };
logging { channel all { file "$d/named.log"; print-time yes; severity info; }; category default { all; }; };
CONF
  for z in "$@"; do
    set -- $z
    if [ "$2" = primary ]; then echo "zone \"$1\" { type primary; file \"$3\"; };"
    else echo "zone \"$1\" { type secondary; file \"$3\"; primaries { $4 port $HZ_PORT; }; };"; fi
  done
}

start_bind_zonefile() { # named authoritative for the zone files written from the AXFR
  local d=$W/bind
  rm -rf "$d"; mkdir -p "$d"
  named_conf "$d" "$BZ_PORT" "sdnet primary $HZ_DIR/q/sdnet.zone" "${REV_ZONE%.} primary $HZ_DIR/q/${REV_ZONE%.}.zone" >"$d/named.conf"
  ip netns exec "$HZ_NS" taskset -c 0 named -f -4 -n 1 -c "$d/named.conf" >"$W/bind-zonefile.log" 2>&1 &
  S_PID[bind-zonefile]=$!
  SRV_PIDS+=("$!")
  S_ADDR[bind-zonefile]=127.0.0.1 S_PORT[bind-zonefile]=$BZ_PORT S_SRC[bind-zonefile]=""
  S_NS[bind-zonefile]=$HZ_NS S_QDIR[bind-zonefile]=$HZ_DIR/q
  set_prio "$!"
}

hz_wait_ready() { # SERVER: c1, cN and a PTR give what the zone file says
  local s=$1 n=$2 i a1 an p pt
  a1=$(awk '$1=="c1.test.sdnet." && $4=="A"{print $5; exit}' "$HZ_DIR/q/sdnet.zone")
  an=$(awk -v k="c$n.test.sdnet." '$1==k && $4=="A"{print $5; exit}' "$HZ_DIR/q/sdnet.zone")
  read -r p pt < <(awk '$4=="PTR"{print $1, $5; exit}' "$HZ_DIR/q/${REV_ZONE%.}.zone")
  [ -n "$a1" ] && [ -n "$an" ] && [ -n "$pt" ] || die "the host zone's AXFR lacks c1/c$n/PTR; see $HZ_DIR/q"
  for i in $(seq 240); do
    kill -0 "${S_PID[$s]}" 2>/dev/null || die "$s (PID ${S_PID[$s]}) exited; see $W"
    if [ "$(dig_q "$s" c1.test.sdnet A +short)" = "$a1" ] && [ "$(dig_q "$s" "c$n.test.sdnet" A +short)" = "$an" ] &&
      [ "$(dig_q "$s" "$p" PTR +short)" = "$pt" ]; then
      say "$s answers (c1, c$n, PTR) after ~$((i / 2)) s"
      return 0
    fi
    sleep 0.5
  done
  die "$s does not answer c1/c$n/PTR of the host zone correctly; see $W"
}

hz_xfr() { # N: AXFR time and size (dig, XFR_REPS times), a BIND secondary's transfer
  local n=$1 r t0 t1 out recs msgs bytes i line
  for r in $(seq "$XFR_REPS"); do
    t0=$EPOCHREALTIME
    out=$(hz_dig sdnet. AXFR +nocmd +noall +stats)
    t1=$EPOCHREALTIME
    read -r recs msgs bytes < <(sed -n 's/.*XFR size: \([0-9]*\) records (messages \([0-9]*\), bytes \([0-9]*\)).*/\1 \2 \3/p' <<<"$out")
    [ -n "${bytes:-}" ] || { say "warning: AXFR rep $r: no XFR size in dig's output"; continue; }
    printf '%s\taxfr-dig\t%s\t%s\t%s\t%s\t%s\n' "$n" "$r" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)*1000}')" "$recs" "$msgs" "$bytes" >>"$HZ_TSV"
  done
  # BIND as a secondary: named logs each transfer's messages, records, bytes and seconds.
  local d=$W/bind-secondary
  rm -rf "$d"; mkdir -p "$d"
  named_conf "$d" "$BS_PORT" "sdnet secondary $d/sdnet.db $HZ_ADDR" >"$d/named.conf"
  ip netns exec "$HZ_NS" taskset -c 1 named -f -4 -n 1 -c "$d/named.conf" >"$d/named.out" 2>&1 &
  local bpid=$!
  SRV_PIDS+=("$bpid")
  line=""
  for i in $(seq 300); do
    line=$(grep -m1 "transfer of 'sdnet/IN'.*Transfer completed" "$d/named.log" 2>/dev/null || true)
    [ -z "$line" ] || break
    sleep 0.1
  done
  kill_wait "$bpid"
  if [ -n "$line" ]; then
    # "... Transfer completed: 51 messages, 10006 records, 312345 bytes, 0.089 secs (...)"
    sed -n 's/.*Transfer completed: \([0-9]*\) messages, \([0-9]*\) records, \([0-9]*\) bytes, \([0-9.]*\) secs.*/\4 \2 \1 \3/p' <<<"$line" |
      awk -v n="$n" -v OFS='\t' '{print n, "axfr-bind-secondary", 1, $1 * 1000, $2, $3, $4}' >>"$HZ_TSV"
  else
    say "warning: the BIND secondary did not complete a transfer in 30 s; see $d"
  fi
}

hz_changes() { # N: CHANGES × (run one sandbox, rm it): API call time, serial seen, rebuild cost
  local n=$1 r op t0 t1 s0 s1 m0 m1 ok name
  for r in $(seq "$CHANGES"); do
    name=hzchange$r
    for op in run rm; do
      s0=$(hz_serial)
      m0=$(hz_metric)
      t0=$EPOCHREALTIME
      if [ "$op" = run ]; then hz run -d --name "$name" --network test >/dev/null; else hz rm -f "$name" >/dev/null; fi
      t1=$EPOCHREALTIME
      # The zone follows before the call returns: the serial and the name are checked right after.
      s1=$(hz_serial)
      ok=1
      [ -n "$s0" ] && [ -n "$s1" ] && [ "$s1" -gt "$s0" ] || ok=0
      if [ "$op" = run ]; then [ -n "$(hz_dig "$name.test.sdnet" A +short)" ] || ok=0
      else [ -z "$(hz_dig "$name.test.sdnet" A +short)" ] || ok=0; fi
      m1=$(hz_metric)
      awk -v n="$n" -v op="change-$op" -v r="$r" -v a="$t0" -v b="$t1" -v m0="$m0" -v m1="$m1" -v ok="$ok" -v OFS='\t' 'BEGIN{
        split(m0, x, " "); split(m1, y, " "); c = y[2] - x[2]
        print n, op, r, sprintf("%.1f", (b-a)*1000), c, (c > 0 ? sprintf("%.2f", (y[1]-x[1])*1000/c) : "-"), ok}' >>"$HZ_TSV"
    done
  done
}

# ---- one dnsperf run ----------------------------------------------------------------------
# run_one N SERVER MIX KIND(sat|half) REP [RATE]: appends one row to results.tsv
run_one() {
  local n=$1 s=$2 mix=$3 kind=$4 rep=$5 rate=${6:-0}
  local pid=${S_PID[$s]} tag="n$n-$s-$mix-$kind-$rep"
  local args=(-s "${S_ADDR[$s]}" -p "${S_PORT[$s]}" -d "${S_QDIR[$s]:-$W/n$n}/q-$mix.txt" -l "$DUR" -c "$CLIENTS" -q "$OUTSTANDING")
  [ -z "${S_SRC[$s]:-}" ] || args+=(-a "${S_SRC[$s]}")
  [ "$kind" = sat ] || args+=(-Q "$rate" -v)
  kill -0 "$pid" 2>/dev/null || die "$s (PID $pid) is gone"

  local su0 ss0 u0 i0 q0 c0 t0 su1 ss1 u1 i1 q1 c1 t1 rc=0
  proc_ticks "$pid"; su0=$PT_U ss0=$PT_S
  proc_ticks "$UP_PID"; u0=$((PT_U + PT_S))
  t0=$EPOCHREALTIME
  children_ticks; c0=$CHILD_TICKS
  cpu_idle; i0=$IDLE q0=$SOFTIRQ
  timeout -k 5 $((DUR + 30)) ip netns exec "${S_NS[$s]:-$NS}" taskset -c 1 dnsperf "${args[@]}" \
    >"$W/dnsperf.out" 2>"$W/dnsperf.err" &
  DP_PID=$!
  wait "$DP_PID" || rc=$?
  DP_PID=""
  cpu_idle; i1=$IDLE q1=$SOFTIRQ
  children_ticks; c1=$CHILD_TICKS
  t1=$EPOCHREALTIME
  proc_ticks "$pid"; su1=$PT_U ss1=$PT_S
  proc_ticks "$UP_PID"; u1=$((PT_U + PT_S))
  [ "$rc" = 0 ] || say "warning: dnsperf exited with $rc ($tag)"

  local rss hwm warn stats lat
  rss=$(status_kib "$pid" VmRSS); hwm=$(status_kib "$pid" VmHWM)
  warn=$(grep -c -i 'warning' "$W/dnsperf.err" || true)
  grep -v '^> ' "$W/dnsperf.out" >"$OUT/raw/$tag.txt" || true
  head -c 4000 "$W/dnsperf.err" >>"$OUT/raw/$tag.txt"
  lat="- - -"
  if [ "$kind" = half ]; then
    lat=$(awk '/^> / && $NF ~ /^[0-9.]+$/ {print $NF}' "$W/dnsperf.out" | sort -g |
      awk '{v[NR]=$1} END{ if (!NR) {print "- - -"; exit}
        i50=int(NR*0.50+0.999999); i99=int(NR*0.99+0.999999); i999=int(NR*0.999+0.999999)
        printf "%.4f %.4f %.4f", v[i50]*1000, v[i99]*1000, v[i999]*1000 }')
  fi
  rm -f "$W/dnsperf.out" "$W/dnsperf.err"

  # Foreign CPU: busy time of both CPUs (2 × wall − idle) minus the server, its upstream and dnsperf.
  awk -v OFS='\t' -v n="$n" -v s="$s" -v mix="$mix" -v kind="$kind" -v rep="$rep" -v rate="$rate" \
    -v lat="$lat" -v h="$TICK" -v srv=$((su1 - su0 + ss1 - ss0)) -v srvu=$((su1 - su0)) -v srvs=$((ss1 - ss0)) -v up=$((u1 - u0)) -v dp=$((c1 - c0)) \
    -v idle=$((i1 - i0)) -v sirq=$((q1 - q0)) -v wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" \
    -v rss="$rss" -v hwm="$hwm" -v warn="$warn" '
    /Queries sent:/ {sent=$3} /Queries completed:/ {done=$3} /Queries lost:/ {lost=$3}
    /Queries per second:/ {qps=$4}
    /Average Latency/ {avg=$4; mn=$6; mx=$8; gsub(/[^0-9.]/, "", mn); gsub(/[^0-9.]/, "", mx)}
    /Response codes:/ {rc=$0; sub(/.*Response codes:[ \t]*/, "", rc)}
    END {
      split(lat, L, " ")
      us = (done > 0 ? srv / h * 1e6 / done : 0)
      # expected answers: NOERROR for A and PTR; about 10 % NXDOMAIN in the mix; the floor
      # servers echo every query as NOERROR
      chk = "ok"; nxp = 0; nop = 0
      if (match(rc, /NXDOMAIN [0-9]+/)) nxp = substr(rc, RSTART + 9, RLENGTH - 9) / (done > 0 ? done : 1)
      if (match(rc, /NOERROR [0-9]+/)) nop = substr(rc, RSTART + 8, RLENGTH - 8) / (done > 0 ? done : 1)
      if (done == 0) chk = "no-answers"
      else if (s ~ /^floor-/) chk = (nop < 0.999 ? "rcodes" : "ok")
      else if (mix == "nx" && (nxp < 0.08 || nxp > 0.12 || nop + nxp < 0.999)) chk = "rcodes"
      else if (mix != "nx" && nop < 0.999) chk = "rcodes"
      if (warn > 0 && chk == "ok") chk = "warnings"
      print n, s, mix, kind, rep, rate, qps+0, avg*1000, mn*1000, mx*1000, L[1], L[2], L[3], sent+0, done+0, lost+0, \
        sprintf("%.2f", wall), sprintf("%.2f", srv/h), sprintf("%.2f", us), sprintf("%.0f", wall > 0 ? srv/h/wall*100 : 0), \
        rss+0, hwm+0, sprintf("%.2f", dp/h), sprintf("%.2f", up/h), sprintf("%.2f", 2 * wall - (idle + srv + up + dp)/h), \
        sprintf("%.2f", sirq/h), warn+0, rc, chk, sprintf("%.2f", srvu/h), sprintf("%.2f", srvs/h)
    }' "$OUT/raw/$tag.txt" >>"$TSV"
  tail -n1 "$TSV" | awk -F'\t' '{printf "  %-14s %-4s %-4s rep %s: %7.0f QPS  avg %.3f ms  p99 %s ms  %5.2f µs CPU/q  lost %d  foreign %.2f s  %s\n",
    $2, $3, $4, $5, $7, $8, $12, $19, $16, $25, $29}' >&2
}

max_qps() { # N SERVER MIX -> max QPS of the saturated runs
  awk -F'\t' -v n="$1" -v s="$2" -v m="$3" '$1==n && $2==s && $3==m && $4=="sat" && $7>q {q=$7} END{printf "%d", q}' "$TSV"
}

# ---------------------------------------------------------------------------------------------
echo "$PRIO" >/proc/self/autogroup 2>/dev/null || say "warning: cannot set /proc/self/autogroup (contention may distort results)"
ip netns add "$NS"
say "namespace $NS, results in $OUT"

REV=${SDCTL_REV:-}
if [ -z "$REV" ]; then
  REV=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] || REV="$REV-dirty"
fi
CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
HEADER=$(
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "kernel: $(uname -r)"
  echo "cpu: $CPU_MODEL × $(nproc) (servers on CPU 0, dnsperf on CPU 1)"
  echo "sdctl: $SDCTL (revision $REV, --threads $SDCTL_THREADS)"
  echo "dnsperf: $(dnsperf -h 2>&1 | awk '/^Version/{print $2; exit}'), -c $CLIENTS -q $OUTSTANDING -l $DUR; reps: A $REPS_A, others $REPS_OTHER"
  echo "dnsmasq: $(dnsmasq --version 2>/dev/null | awk 'NR==1{print $3}'); unbound: $(unbound -V 2>/dev/null | awk 'NR==1{print $2}')"
  echo "sizes: $SIZES; servers: $ONLY; unknown names in the NX mix: $NX_NAMES distinct"
  [ -z "$FLOOR" ] || echo "udp_floor (floor-* servers): $FLOOR"
)
{
  sed 's/^/# /' <<<"$HEADER"
  printf 'size\tserver\tmix\tkind\trep\trate\tqps\tavg_ms\tmin_ms\tmax_ms\tp50_ms\tp99_ms\tp999_ms\tsent\tcompleted\tlost\twall_s\tsrv_cpu_s\tus_per_q\tsrv_cpu_pct\trss_kib\thwm_kib\tdnsperf_cpu_s\tupstream_cpu_s\tforeign_cpu_s\tsoftirq_s\twarnings\trcodes\tcheck\tsrv_user_s\tsrv_sys_s\n'
} >"$TSV"

HZ_TSV=$OUT/hostzone.tsv
printf 'size\twhat\trep\tms\trecords_or_rebuilds\tmessages_or_rebuild_ms\tbytes_or_ok\n' >"$HZ_TSV"

SECTIONS=""
for N in $SIZES; do
  say "== $N names: generating data"
  gen_data "$N" "$W/n$N"
  say "starting servers"
  start_all "$N" "$W/n$N"
  servers=()
  for s in sdctl sdctl-nocache sdctl-aardvark sdctl-hostzone bind-zonefile dnsmasq unbound aardvark $FLOORS; do
    has "$s" && [ -n "${S_PID[$s]:-}" ] && servers+=("$s")
  done
  maxreps=$REPS_A; [ "$REPS_OTHER" -le "$maxreps" ] || maxreps=$REPS_OTHER
  # Saturating runs, interleaved so slow drifts on the machine hit every server alike.
  for rep in $(seq "$maxreps"); do
    for mix in a nx ptr; do
      r=$REPS_OTHER; [ "$mix" != a ] || r=$REPS_A
      [ "$rep" -le "$r" ] || continue
      for s in "${servers[@]}"; do
        if [ "$s" = sdctl-nocache ] && { [ "$mix" != nx ] || [ "$rep" != 1 ]; }; then continue; fi
        run_one "$N" "$s" "$mix" sat "$rep"
      done
    done
  done
  # Fixed rate at half of each server's best QPS for the mix: latency (p99) at half load.
  for mix in a nx ptr; do
    for s in "${servers[@]}"; do
      [ "$s" != sdctl-nocache ] || [ "$mix" = nx ] || continue
      q=$(max_qps "$N" "$s" "$mix")
      [ "$q" -ge 2 ] || { say "warning: $s $mix: no QPS measured, skipping ½ load"; continue; }
      run_one "$N" "$s" "$mix" half 1 $((q / 2))
    done
  done
  for s in $FLOORS; do # a floor that fell back from GSO or could not send measured something else
    [ ! -f "$W/$s.log" ] || grep -E 'GSO refused|send failed' "$W/$s.log" | sed "s/^/warning: $s: /" >&2 || true
  done
  stop_servers
  section=$(awk -v mode=size -v N="$N" -f "$REPORT_AWK" "$TSV")
  SECTIONS+=$section$'\n\n'
  printf '\n%s\n\n' "$section"
done
if has_hz && [ "$(wc -l <"$HZ_TSV")" -gt 1 ]; then
  section=$(awk -v mode=hostzone -f "$REPORT_AWK" "$TSV" "$HZ_TSV")
  SECTIONS+=$section$'\n\n'
  printf '%s\n\n' "$section"
fi

set -- $SIZES
first=$1
last=${!#}
if [ "$first" != "$last" ] && has sdctl; then
  section=$(awk -v mode=scale -v small="$first" -v big="$last" -f "$REPORT_AWK" "$TSV")
  SECTIONS+=$section$'\n\n'
  printf '%s\n\n' "$section"
fi

{
  echo "# sdctl dns serve vs dnsmasq / unbound / aardvark-dns"
  echo
  sed 's/^/- /' <<<"$HEADER"
  echo
  echo "QPS: median of the saturating runs. dnsperf on its one core is near its own limit at these"
  echo "rates (80–150k QPS depending on machine load), so compare **µs CPU/query** first: server"
  echo "utime+stime over the run ÷ queries answered. % in kernel: stime share of that. avg ms:"
  echo "median of the saturating runs. ½ load: one run at -Q = half the best saturated QPS of that"
  echo "server and mix; p99 from dnsperf -v per-query latencies. RSS after the last run. foreign"
  echo "CPU-s: busy time of both CPUs not used by the server, its upstream or dnsperf (max over runs;"
  echo "other jobs on the machine, or softirq work not charged to a process)."
  echo "Ratios are to the best of dnsmasq/unbound for the same mix (QPS: highest, CPU: lowest)."
  echo "floor-gso/-mmsg/-sendto: udp_floor, which echoes each query as NOERROR with no work (UDP"
  echo "GSO / recvmmsg+sendmmsg / recvfrom+sendto): the kernel's per-datagram cost, which no server"
  echo "using the socket API goes below. They are not anchors; each size's table is followed by"
  echo "a floor table (sdctl and best anchor ÷ floor-gso)."
  echo
  printf '%s' "$SECTIONS"
  echo "Raw rows: results.tsv (hostzone.tsv: AXFR and zone changes); dnsperf outputs: raw/."
} >"$MD"
say "done: $MD and $TSV"
