#!/usr/bin/env bash
# Runs every sdnet test on a fresh Debian machine, as root: installs the tools the end-to-end
# tests drive (dig, kdig, dnsmasq, named, nft, ...; dnsperf too, for the benchmarks; etcd for the
# cluster store's tests; protoc to build the etcd client), builds the
# workspace, runs unit and end-to-end tests. Benchmarks (tests/bench/) and fuzzing (fuzz/)
# are separate: see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test-all: run as root (the end-to-end tests create network namespaces)" >&2
  exit 1
fi

# command:package pairs; install only what is missing, so a prepared machine needs no network.
need=()
for pair in dig:bind9-dnsutils kdig:knot-dnsutils dnsmasq:dnsmasq named:bind9 nft:nftables ip:iproute2 \
            ping:iputils-ping socat:socat curl:curl busybox:busybox-static nsenter:util-linux \
            unshare:util-linux conntrack:conntrack dnsperf:dnsperf etcd:etcd-server etcdctl:etcd-client \
            protoc:protobuf-compiler; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# tests/tests/aardvark.rs: Podman's netavark and aardvark-dns (the baseline), and iptables
# (netavark 1.4's firewall driver; it only touches the test's own namespaces).
[ -x /usr/lib/podman/netavark ] || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# tests/tests/podman.rs: Podman itself (4.3, with runc: crun refuses hybrid cgroups).
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
# tests/tests/cni.rs: the real CNI plugins (bridge, host-local, portmap — iptables —, macvlan,
# static) that `-d cni` networks run.
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# etcd-client's build compiles etcd's protos, which import protobuf's well-known types.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-all: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "test-all: needs a Rust toolchain (cargo)" >&2; exit 1; }

cargo build --workspace --all-targets --locked
# Two end-to-end tests at a time per binary: they mostly wait on the kernel, but on a 2-core
# machine four at once (each making and tearing down namespaces) kept the kernel's RTNL lock
# busy for 15-20 s at a time and tests missed their liveness bounds.
# --no-fail-fast: one failing test binary must not hide the results of the others.
log=$(mktemp /tmp/sdnet-test-all.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${SDNET_TEST_THREADS:-2}" \
  2>&1 | tee "$log" || status=$?
# One line of totals over every test binary ("test result: ok. 12 passed; 0 failed; ...").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { n = $i + 0
       if ($(i+1) ~ /^passed/) p += n; if ($(i+1) ~ /^failed/) f += n; if ($(i+1) ~ /^ignored/) g += n }
       b++ }
     END { printf "test-all: %d passed, %d failed, %d ignored in %d test binaries and doc-test runs\n", p, f, g, b }' "$log"
if [ "$status" != 0 ]; then
  echo "test-all: FAILED (the failures are listed above, under 'failures:')" >&2
  exit "$status"
fi
echo "test-all: all tests passed"
