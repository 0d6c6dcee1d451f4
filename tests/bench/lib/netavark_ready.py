#!/usr/bin/env python3
"""From `netavark setup` returning to the new container's name answering, per DNS server.

Run by tests/bench/netavark.sh inside a throw-away "host" network namespace (its network
namespace only: `ip netns add` mounts stay visible). For each server binary (sdctl as
aardvark-dns, the real aardvark-dns) in turn: N containers (namespaces) are set up one after
the other on one bridge network of their own by the real netavark started with `-a BINARY`.
Before each setup (untimed) a UDP socket is opened inside the new container's namespace; the
moment netavark returns, the container asks the gateway for its own name (A) on that socket,
waits up to FIRST_WAIT for the answer, and records what the first query got (the right address,
NXDOMAIN/other, or no answer) and its reply time; then it asks again every RETRY until the
right address comes (or GIVE_UP), the "ready" lag. Finally every container is torn down.

Output: one TSV row per container on stdout; progress on stderr.
"""

import ctypes
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time

FIRST_WAIT = 1.0  # s for the first query's answer
RETRY = 0.0005  # s between later queries
GIVE_UP = 5.0  # s after netavark returned
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    # os.setns only exists from Python 3.12 on (Debian 12 has 3.11)
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def in_netns(path, fn):
    """Runs fn() with this thread in the network namespace at path, then comes back."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        setns(target)
        try:
            return fn()
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


def a_query(qid, name):
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return head + qname + struct.pack("!HH", 1, 1)


def skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += n + 1


def a_answers(msg):
    """(id, rcode, [IPv4 addresses]) of a reply."""
    qid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        off = skip_name(msg, off) + 4
    ips = []
    for _ in range(an):
        off = skip_name(msg, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off : off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            ips.append(socket.inet_ntoa(msg[off : off + 4]))
        off += rdlen
    return qid, flags & 0xF, ips


def setup_json(net, i):
    ip = f"{net['prefix']}.{i // 250}.{i % 250 + 2}"
    ident = f"{net['tag']}{i:08x}".ljust(64, "0")
    return ip, json.dumps(
        {
            "container_id": ident,
            "container_name": f"ctr{i}",
            "networks": {
                net["name"]: {
                    "static_ips": [ip],
                    "aliases": [ident[:12]],
                    "interface_name": "eth0",
                }
            },
            "network_info": {
                net["name"]: {
                    "name": net["name"],
                    "id": net["tag"].ljust(64, "f"),
                    "driver": "bridge",
                    "network_interface": net["bridge"],
                    "subnets": [
                        {"subnet": f"{net['prefix']}.0.0/16", "gateway": net["gateway"]}
                    ],
                    "ipv6_enabled": False,
                    "internal": False,
                    "dns_enabled": True,
                    "ipam_options": {"driver": "host-local"},
                }
            },
        }
    )


def probe(sock, name, want, server, returned):
    """What the first query got, its reply time, and the lag until the right answer."""
    qid = random.randrange(65536)
    sent = set()
    first = None  # (result, reply_s)
    ready = None
    attempts = 0
    wait = FIRST_WAIT
    while ready is None and time.monotonic() - returned < GIVE_UP:
        qid = (qid + 1) & 0xFFFF
        sent.add(qid)
        attempts += 1
        t_sent = time.monotonic()
        sock.sendto(a_query(qid, name), (server, 53))
        end = t_sent + wait
        got = None
        while got is None:
            left = end - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            rid, rcode, ips = a_answers(sock.recv(4096))
            if rid in sent:  # an answer to an earlier query counts as well
                got = ("ok" if want in ips else f"rcode{rcode}", time.monotonic())
        if first is None:
            first = (got[0], got[1] - t_sent) if got else ("lost", None)
            wait = RETRY
        if got and got[0] == "ok":
            ready = got[1] - returned
        elif got:
            time.sleep(RETRY)
    return first, ready, attempts


def run_phase(label, binary, net, n, netavark, cfg, prefix, out):
    os.makedirs(cfg, exist_ok=True)
    made = []
    env = dict(os.environ)
    env.setdefault("NETAVARK_FW", "iptables")  # netavark 2.x: NETAVARK_FW=nftables
    log(f"{label}: {n} setups with -a {binary}")
    try:
        for i in range(1, n + 1):
            ns = f"{prefix}-{net['tag']}{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            path = f"/run/netns/{ns}"
            sock = in_netns(path, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            ip, spec = setup_json(net, i)
            t0 = time.monotonic()
            r = subprocess.run(
                [netavark, "--config", cfg, "-a", binary, "setup", path],
                input=spec.encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
            returned = time.monotonic()
            if r.returncode != 0:
                raise RuntimeError(f"netavark setup {i}: {r.stderr.decode(errors='replace')}")
            try:
                first, ready, attempts = probe(sock, f"ctr{i}", ip, net["gateway"], returned)
            finally:
                sock.close()
            ms = lambda v: "NA" if v is None else f"{v * 1000:.3f}"
            print(
                f"{label}\t{i}\t{ms(returned - t0)}\t{first[0]}\t{ms(first[1])}\t{ms(ready)}\t{attempts}",
                file=out,
                flush=True,
            )
    finally:
        for i, ns in enumerate(made, start=1):
            _, spec = setup_json(net, i)
            subprocess.run(
                [netavark, "--config", cfg, "-a", binary, "teardown", f"/run/netns/{ns}"],
                input=spec.encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        stop_server(cfg)


def stop_server(cfg):
    """Ends a server still running on cfg (the last teardown normally ends it)."""
    pidfile = os.path.join(cfg, "aardvark-dns", "aardvark.pid")
    try:
        pid = int(open(pidfile).read().strip())
    except (OSError, ValueError):
        return
    try:
        mine = os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:
        return
    if pid > 1 and mine:
        os.kill(pid, 15)


def main():
    n, netavark, work, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    servers = sys.argv[5:]  # LABEL=BINARY ...
    print("server\ti\tsetup_ms\tfirst\tfirst_reply_ms\tready_ms\tattempts", flush=True)
    for k, spec in enumerate(servers):
        label, binary = spec.split("=", 1)
        net = {
            "name": f"rdy{k}",
            "tag": f"{k + 1:x}a",
            "bridge": f"{prefix[:8]}br{k}",
            "prefix": f"10.{131 + k}",
            "gateway": f"10.{131 + k}.0.1",
        }
        run_phase(label, binary, net, n, netavark, f"{work}/cfg{k}", prefix, sys.stdout)


if __name__ == "__main__":
    main()
