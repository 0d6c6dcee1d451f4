#!/usr/bin/env bash
# The main job on a fresh machine, as root: build sdctl, start the daemon with its embedded
# defaults, create a network and two sandboxes, and show them resolving each other through
# the embedded DNS at 127.0.0.11. The daemon keeps running afterwards; the last lines say how
# to stop it and remove what the demo made.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (sdnet creates network namespaces, bridges and nftables rules)" >&2
  exit 1
fi
need=()
# (socat and curl: the README's walkthrough after the demo uses them)
# (protoc and protobuf's .proto files: building the etcd client compiles etcd's protos)
for pair in dig:bind9-dnsutils nft:nftables ip:iproute2 ping:iputils-ping socat:socat curl:curl \
            protoc:protobuf-compiler; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== building sdctl (release; the first build takes a few minutes on 2 cores)"
# cargo prints its own progress: a bar on a terminal, one line per crate otherwise.
cargo build --release --locked -p sdctl
SDCTL=$PWD/target/release/sdctl
sock=${SDNET_SOCKET:-/run/sdnet/sdnet.sock}
export SDNET_SOCKET=$sock

if ! "$SDCTL" ps >/dev/null 2>&1; then
  log=${SDNET_DEMO_LOG:-/var/log/sdnet-demo.log}
  echo "== starting the daemon (log: $log)"
  "$SDCTL" daemon >"$log" 2>&1 &
  echo "$!" > "${SDNET_DEMO_PIDFILE:-/run/sdnet-demo.pid}"
  for _ in $(seq 100); do "$SDCTL" ps >/dev/null 2>&1 && break; sleep 0.1; done
  "$SDCTL" ps >/dev/null || { cat "$log"; exit 1; }
fi

run() { echo "\$ sdctl $*"; "$SDCTL" "$@"; }
echo "== a network and two sandboxes"
"$SDCTL" network inspect demo >/dev/null 2>&1 || run network create demo
for s in demo-a demo-b; do
  "$SDCTL" inspect "$s" >/dev/null 2>&1 || run run -d --name "$s" --network demo
done
run network ls
run ps
echo "== demo-a asks 127.0.0.11 for demo-b, and demo-b for demo-a"
run exec demo-a -- dig +noall +answer demo-b
run exec demo-b -- getent hosts demo-a
run exec demo-a -- ping -c 2 -W 2 demo-b
echo "== what the resolver answers, from the daemon's side"
run dns query --from demo-a demo-b
echo
echo "The daemon keeps running. Remove the demo with:"
echo "  $SDCTL rm -f demo-a demo-b && $SDCTL network rm demo"
echo "Stop the daemon with: kill \$(cat ${SDNET_DEMO_PIDFILE:-/run/sdnet-demo.pid})   (sandboxes and networks stay;"
echo "  '$SDCTL daemon --cleanup' removes every kernel object of sdnet's)"
