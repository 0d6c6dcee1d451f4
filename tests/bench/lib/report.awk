# Summarise tests/bench/dns.sh raw results (results.tsv) as markdown. mawk-compatible.
#
#   awk -v mode=size -v N=1000 -f report.awk results.tsv     table + targets for one size
#   awk -v mode=scale -v small=1000 -v big=100000 -f report.awk results.tsv
#   awk -v mode=hostzone -f report.awk results.tsv hostzone.tsv      host zone vs sdctl vs BIND
#
# Columns of results.tsv (tab-separated; lines starting with '#' and the header are skipped):
#  1 size  2 server  3 mix  4 kind(sat|half)  5 rep  6 rate  7 qps  8 avg_ms  9 min_ms
# 10 max_ms  11 p50_ms  12 p99_ms  13 p999_ms  14 sent  15 completed  16 lost  17 wall_s
# 18 srv_cpu_s  19 us_per_q  20 srv_cpu_pct  21 rss_kib  22 hwm_kib  23 dnsperf_cpu_s
# 24 upstream_cpu_s  25 foreign_cpu_s  26 softirq_s  27 warnings  28 rcodes  29 check
# 30 srv_user_s  31 srv_sys_s
# hostzone.tsv: 1 size  2 what (axfr-dig | axfr-bind-secondary | change-run | change-rm)  3 rep
#  4 ms (transfer time, or the API call's wall time)  then for axfr-*: 5 records 6 messages
#  7 bytes; for change-*: 5 zone rebuilds during the call 6 ms per rebuild 7 serial and name
#  seen right after the call returned (1/0)

function median(arr, key, n,    i, j, t, v) {
  for (i = 1; i <= n; i++) v[i] = arr[key, i] + 0
  for (i = 2; i <= n; i++) {
    t = v[i]
    for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]
    v[j + 1] = t
  }
  if (n == 0) return ""
  if (n % 2) return v[(n + 1) / 2]
  return (v[n / 2] + v[n / 2 + 1]) / 2
}
function minof(arr, key, n,    i, m) {
  m = ""
  for (i = 1; i <= n; i++) if (m == "" || arr[key, i] + 0 < m) m = arr[key, i] + 0
  return m
}
function maxof(arr, key, n,    i, m) {
  m = ""
  for (i = 1; i <= n; i++) if (m == "" || arr[key, i] + 0 > m) m = arr[key, i] + 0
  return m
}
function f(x, fmt) { return (x == "" ? "–" : sprintf(fmt, x)) }
function pm(ok) { return ok ? "PASS" : "MISS" }
function label(s) { return s == "sdctl-nocache" ? "sdctl (--cache-size 0)" : s == "sdctl-aardvark" ? "sdctl aardvark-dns" : s == "sdctl-hostzone" ? "sdctl host zone" : s == "bind-zonefile" ? "BIND (zone file)" : s }
function mixlabel(m) { return m == "a" ? "A" : (m == "nx" ? "10 % NX" : (m == "ptr" ? "PTR" : m)) }

BEGIN {
  FS = "\t"
  # floor-*: udp_floor (zero-work echo); listed, but never an anchor
  nsrv = split("sdctl sdctl-nocache sdctl-aardvark sdctl-hostzone bind-zonefile dnsmasq unbound aardvark floor-gso floor-mmsg floor-sendto floor-uring", SRV, " ")
  nmix = split("a nx ptr", MIX, " ")
}
/^#/ || $1 == "size" { next }
FILENAME ~ /hostzone\.tsv$/ {
  k = $1 SUBSEP $2
  if (!(($1) in hzsize)) { hzsize[$1] = 1; hzsizes[++nhz] = $1 }
  n = ++hn2[k]
  hms[k, n] = $4; h5[k, n] = $5; h6[k, n] = $6; h7[k, n] = $7
  next
}
{
  k = $1 SUBSEP $2 SUBSEP $3
  if ($4 == "sat") {
    n = ++ns[k]
    qps[k, n] = $7; avg[k, n] = $8; us[k, n] = $19; sysf[k, n] = ($30 + $31 > 0 ? $31 / ($30 + $31) * 100 : 0); up[k, n] = ($15 > 0 ? $24 * 1e6 / $15 : 0)
    lost[k] += $16
    if ($21 + 0 > rss[k] + 0) rss[k] = $21
    if (foreign[k] == "" || $25 + 0 > foreign[k] + 0) foreign[k] = $25
    if ($29 != "ok" && index(bad[k], " " $29) == 0) bad[k] = bad[k] " " $29
  } else if ($4 == "half") {
    hn[k] = 1; hrate[k] = $6; hq[k] = $7; havg[k] = $8; hp99[k] = ($12 == "-" ? "" : $12); hus[k] = $19
    hlost[k] = $16; hforeign[k] = $25
    hup[k] = ($15 > 0 ? $24 * 1e6 / $15 : 0)
    if ($29 != "ok" && index(bad[k], " " $29) == 0) bad[k] = bad[k] " " $29
  }
}
END {
  if (mode == "scale") { scale(); exit }
  if (mode == "hostzone") { hostzone(); exit }
  # Best anchor (dnsmasq/unbound) per mix: highest median QPS, lowest median CPU/query.
  for (m = 1; m <= nmix; m++) {
    bq[MIX[m]] = ""; bc[MIX[m]] = ""
    for (s = 1; s <= nsrv; s++) {
      if (SRV[s] != "dnsmasq" && SRV[s] != "unbound") continue
      k = N SUBSEP SRV[s] SUBSEP MIX[m]
      if (!ns[k]) continue
      q = median(qps, k, ns[k]); c = median(us, k, ns[k])
      if (bq[MIX[m]] == "" || q > bq[MIX[m]]) bq[MIX[m]] = q
      if (bc[MIX[m]] == "" || c < bc[MIX[m]]) bc[MIX[m]] = c
    }
  }
  printf "### %d names\n\n", N
  print "| server | mix | QPS median (min–max) | avg ms | µs CPU/query | % in kernel | RSS KiB | lost | foreign CPU-s | ½-load QPS | ½-load avg ms | ½-load p99 ms | ½-load µs CPU/query | QPS ÷ best anchor | CPU/query ÷ best anchor |"
  print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  notes = ""
  for (s = 1; s <= nsrv; s++) for (m = 1; m <= nmix; m++) {
    k = N SUBSEP SRV[s] SUBSEP MIX[m]
    if (!ns[k]) continue
    q = median(qps, k, ns[k]); c = median(us, k, ns[k])
    qr = (bq[MIX[m]] > 0 ? q / bq[MIX[m]] : ""); cr = (bc[MIX[m]] > 0 ? c / bc[MIX[m]] : "")
    printf "| %s | %s | %.0f (%.0f–%.0f) | %.3f | %.2f | %.0f | %d | %d | %.2f | %s | %s | %s | %s | %s | %s |\n",
      label(SRV[s]), mixlabel(MIX[m]), q, minof(qps, k, ns[k]), maxof(qps, k, ns[k]),
      median(avg, k, ns[k]), c, median(sysf, k, ns[k]), rss[k], lost[k], foreign[k],
      (hn[k] ? sprintf("%.0f (-Q %d)", hq[k], hrate[k]) : "–"), (hn[k] ? f(havg[k], "%.3f") : "–"),
      (hn[k] ? f(hp99[k], "%.3f") : "–"), (hn[k] ? f(hus[k], "%.2f") : "–"),
      f(qr, "%.2f"), f(cr, "%.2f")
    if (SRV[s] ~ /^sdctl/ && SRV[s] != "sdctl-aardvark" && MIX[m] == "nx")
      notes = notes sprintf("- %s, 10 %% NX: the upstream (unbound 127.0.0.11, also on CPU 0) used %.2f µs per query saturated, %.2f at ½ load (not included in sdctl's figure).\n",
        label(SRV[s]), median(up, k, ns[k]), hup[k])
    if (bad[k] != "" && SRV[s] ~ /^floor-/)
      notes = notes sprintf("- **check** %s %s:%s (rcodes: not all NOERROR, which an echo always gives; warnings: dnsperf warnings; see raw/).\n", label(SRV[s]), mixlabel(MIX[m]), bad[k])
    else if (bad[k] != "")
      notes = notes sprintf("- **check** %s %s:%s (rcodes: not the expected NOERROR / ~10 %% NXDOMAIN; warnings: dnsperf warnings such as unexpected IDs; see raw/).\n", label(SRV[s]), mixlabel(MIX[m]), bad[k])
  }
  print ""
  if (notes != "") { printf "%s\n", notes }
  floors()

  # Targets (sdctl with its cache).
  printf "Targets for sdctl at %d names (informational):\n\n", N
  ka = N SUBSEP "sdctl" SUBSEP "a"; kp = N SUBSEP "sdctl" SUBSEP "ptr"
  if (ns[ka] && bc["a"] > 0) {
    r = median(us, ka, ns[ka]) / bc["a"]
    printf "- %s CPU per local A query ≤ 0.5× best of dnsmasq/unbound: %.2f µs vs %.2f µs = %.2f×\n", pm(r <= 0.5), median(us, ka, ns[ka]), bc["a"], r
  }
  for (m = 1; m <= nmix; m++) {
    k = N SUBSEP "sdctl" SUBSEP MIX[m]
    if (!ns[k] || !(bq[MIX[m]] > 0)) continue
    q = median(qps, k, ns[k])
    printf "- %s QPS ≥ best of dnsmasq/unbound, %s: %.0f vs %.0f = %.2f×\n", pm(q >= bq[MIX[m]]), mixlabel(MIX[m]), q, bq[MIX[m]], q / bq[MIX[m]]
  }
  if (ns[ka] && ns[kp]) {
    qa = median(qps, ka, ns[ka]); qp = median(qps, kp, ns[kp])
    ca = median(us, ka, ns[ka]); cp = median(us, kp, ns[kp])
    printf "- %s PTR as fast as A (within 10 %%), QPS: %.0f vs %.0f = %.2f×\n", pm(qp >= 0.9 * qa), qp, qa, qp / qa
    if (ca > 0) printf "- %s PTR as cheap as A (within 10 %%), CPU/query: %.2f vs %.2f µs = %.2f×\n", pm(cp <= 1.1 * ca), cp, ca, cp / ca
  }
  for (s = 1; s <= 2; s++) for (m = 1; m <= nmix; m++) {
    k = N SUBSEP SRV[s] SUBSEP MIX[m]
    if (!hn[k]) continue
    if (hp99[k] == "") { printf "- MISS p99 < 1 ms at ½ load, %s %s: no latency samples\n", label(SRV[s]), mixlabel(MIX[m]); continue }
    printf "- %s p99 < 1 ms at ½ load, %s %s: %.3f ms at %d QPS\n", pm(hp99[k] < 1), label(SRV[s]), mixlabel(MIX[m]), hp99[k], hrate[k]
  }
  # Podman's drop-in (issue 14): sdctl aardvark-dns vs aardvark-dns on the same config, same
  # run; goal for A: ≥ 3× the QPS at ≤ 0.3× the CPU per query (other mixes listed).
  for (m = 1; m <= nmix; m++) {
    ks = N SUBSEP "sdctl-aardvark" SUBSEP MIX[m]; kv = N SUBSEP "aardvark" SUBSEP MIX[m]
    if (!ns[ks] || !ns[kv]) continue
    qs = median(qps, ks, ns[ks]); qv = median(qps, kv, ns[kv]); cs = median(us, ks, ns[ks]); cv = median(us, kv, ns[kv])
    if (!(qv > 0) || !(cv > 0)) continue
    if (MIX[m] == "a") {
      printf "- %s sdctl aardvark-dns ≥ 3× aardvark-dns QPS, A: %.0f vs %.0f = %.2f×\n", pm(qs >= 3 * qv), qs, qv, qs / qv
      printf "- %s sdctl aardvark-dns ≤ 0.3× aardvark-dns CPU/query, A: %.2f vs %.2f µs = %.2f×\n", pm(cs <= 0.3 * cv), cs, cv, cs / cv
    } else
      printf "- (info) sdctl aardvark-dns vs aardvark-dns, %s: QPS %.0f vs %.0f = %.2f×, CPU/query %.2f vs %.2f µs = %.2f×\n", mixlabel(MIX[m]), qs, qv, qs / qv, cs, cv, cs / cv
  }
  print ""
}
# The kernel's floor: µs CPU/query of the udp_floor servers and sdctl's distance above it.
function floors(    s, m, any, g, mm, st, c, a) {
  any = 0
  for (m = 1; m <= nmix; m++)
    for (s = 1; s <= nsrv; s++)
      if (SRV[s] ~ /^floor-/ && ns[N SUBSEP SRV[s] SUBSEP MIX[m]]) any = 1
  if (!any) return
  printf "Kernel floor at %d names (udp_floor: every query echoed as NOERROR, no work), µs CPU/query, median of the saturating runs:\n\n", N
  print "| mix | floor-gso | floor-mmsg | floor-sendto | sdctl | sdctl ÷ floor-gso | best anchor | best anchor ÷ floor-gso |"
  print "|---|---|---|---|---|---|---|---|"
  for (m = 1; m <= nmix; m++) {
    g = med(N SUBSEP "floor-gso" SUBSEP MIX[m]); mm = med(N SUBSEP "floor-mmsg" SUBSEP MIX[m])
    st = med(N SUBSEP "floor-sendto" SUBSEP MIX[m]); c = med(N SUBSEP "sdctl" SUBSEP MIX[m]); a = bc[MIX[m]]
    if (g == "" && mm == "" && st == "") continue
    printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", mixlabel(MIX[m]), f(g, "%.2f"), f(mm, "%.2f"), f(st, "%.2f"),
      f(c, "%.2f"), f(c != "" && g > 0 ? c / g : "", "%.2f"), f(a, "%.2f"), f(a != "" && g > 0 ? a / g : "", "%.2f")
  }
  print ""
  g = med(N SUBSEP "floor-gso" SUBSEP "a")
  if (g > 0 && bc["a"] > 0)
    printf "- the CPU target for A (0.5× best anchor = %.2f µs) is %.2f× floor-gso (%.2f µs)\n\n", bc["a"] / 2, bc["a"] / 2 / g, g
}
function med(k) { return ns[k] ? median(us, k, ns[k]) : "" }
function scale(    m, k1, k2, q1, q2, c1, c2) {
  printf "### sdctl: %d → %d names\n\n", small, big
  print "| mix | QPS | QPS change | µs CPU/query | CPU/query change | target (within 10 %) |"
  print "|---|---|---|---|---|---|"
  for (m = 1; m <= nmix; m++) {
    k1 = small SUBSEP "sdctl" SUBSEP MIX[m]; k2 = big SUBSEP "sdctl" SUBSEP MIX[m]
    if (!ns[k1] || !ns[k2]) continue
    if (!(median(qps, k1, ns[k1]) > 0) || !(median(us, k1, ns[k1]) > 0)) continue
    q1 = median(qps, k1, ns[k1]); q2 = median(qps, k2, ns[k2])
    c1 = median(us, k1, ns[k1]); c2 = median(us, k2, ns[k2])
    printf "| %s | %.0f → %.0f | %+.1f %% | %.2f → %.2f | %+.1f %% | QPS %s, CPU %s |\n", mixlabel(MIX[m]),
      q1, q2, (q2 / q1 - 1) * 100, c1, c2, (c2 / c1 - 1) * 100, pm(q2 >= 0.9 * q1), pm(c2 <= 1.1 * c1)
  }
  print ""
}

# The host zone beside the in-sandbox resolver (sdctl dns serve, same engine as 127.0.0.11) and
# BIND serving the same zone from a file; then AXFR and the cost of one change.
function hostzone(    i, z, m, kh, ks, kb, qh, qs, qb, ch, cs, cb, k, ok, j) {
  print "### Host zone (sdctl daemon --host-dns) vs in-sandbox resolver vs BIND (zone file)\n"
  print "Medians of the saturating runs. in-sandbox: the `sdctl` row (`sdctl dns serve`, the resolver of 127.0.0.11); BIND: `named -n 1` authoritative for the zone files written from the daemon's AXFR.\n"
  print "| names | mix | host zone QPS | in-sandbox QPS | BIND QPS | host zone µs CPU/q | in-sandbox µs CPU/q | BIND µs CPU/q | QPS: host zone ÷ in-sandbox | ÷ BIND | CPU/q: host zone ÷ in-sandbox | ÷ BIND |"
  print "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for (i = 1; i <= nhz; i++) for (m = 1; m <= nmix; m++) {
    kh = hzsizes[i] SUBSEP "sdctl-hostzone" SUBSEP MIX[m]; ks = hzsizes[i] SUBSEP "sdctl" SUBSEP MIX[m]; kb = hzsizes[i] SUBSEP "bind-zonefile" SUBSEP MIX[m]
    if (!ns[kh]) continue
    qh = median(qps, kh, ns[kh]); ch = median(us, kh, ns[kh])
    qs = (ns[ks] ? median(qps, ks, ns[ks]) : ""); cs = (ns[ks] ? median(us, ks, ns[ks]) : "")
    qb = (ns[kb] ? median(qps, kb, ns[kb]) : ""); cb = (ns[kb] ? median(us, kb, ns[kb]) : "")
    printf "| %d | %s | %.0f | %s | %s | %.2f | %s | %s | %s | %s | %s | %s |\n", hzsizes[i], mixlabel(MIX[m]), qh, f(qs, "%.0f"), f(qb, "%.0f"),
      ch, f(cs, "%.2f"), f(cb, "%.2f"), f(qs > 0 ? qh / qs : "", "%.2f"), f(qb > 0 ? qh / qb : "", "%.2f"),
      f(cs > 0 ? ch / cs : "", "%.2f"), f(cb > 0 ? ch / cb : "", "%.2f")
  }
  print ""
  print "AXFR of the forward zone (`dig sdnet. AXFR`, median of the reps; BIND as a secondary: the time it logs for its transfer) and one change (`sdctl run -d` of a sandbox, then `rm -f`): the API call's wall time (median), the zone rebuilds during it and their median duration (`sdnet_hostdns_rebuild_duration_seconds`), and whether the new serial (and the name) were seen right after the call returned.\n"
  print "| names | AXFR ms (dig) | records | messages | bytes | BIND secondary transfer ms | run: API call ms | run: rebuild ms | rm: API call ms | rm: rebuild ms | rebuilds per call | seen at return |"
  print "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for (i = 1; i <= nhz; i++) {
    z = hzsizes[i]
    k = z SUBSEP "axfr-dig"; kb = z SUBSEP "axfr-bind-secondary"; kh = z SUBSEP "change-run"; ks = z SUBSEP "change-rm"
    ok = 0; j = 0
    for (m = 1; m <= hn2[kh]; m++) { j++; ok += h7[kh, m] }
    for (m = 1; m <= hn2[ks]; m++) { j++; ok += h7[ks, m] }
    printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d |\n", z,
      f(hn2[k] ? median(hms, k, hn2[k]) : "", "%.1f"), f(hn2[k] ? h5[k, 1] : "", "%d"), f(hn2[k] ? h6[k, 1] : "", "%d"), f(hn2[k] ? h7[k, 1] : "", "%d"),
      f(hn2[kb] ? hms[kb, 1] : "", "%.1f"),
      f(hn2[kh] ? median(hms, kh, hn2[kh]) : "", "%.1f"), f(hn2[kh] ? median(h6, kh, hn2[kh]) : "", "%.2f"),
      f(hn2[ks] ? median(hms, ks, hn2[ks]) : "", "%.1f"), f(hn2[ks] ? median(h6, ks, hn2[ks]) : "", "%.2f"),
      f(hn2[kh] ? median(h5, kh, hn2[kh]) : "", "%.0f"), ok, j
  }
  print ""
}
