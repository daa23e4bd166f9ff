"""Summarises a load run: medians per target, same-round ratios against the performance targets,
JSON + SVG."""
import json
import math
import statistics
import sys
from collections import defaultdict

path, idle_kib, conns_kib, start_ms, cores, cpu = sys.argv[1:7]
rows = defaultdict(list)
rps_by_round = defaultdict(dict)
for line in open(path):
    name, round_, rps, p50, p99, bad, user_us, sys_us = line.rstrip("\n").split("\t")
    rows[name].append((float(rps), float(p50), float(p99), int(bad), float(user_us), float(sys_us)))
    rps_by_round[round_][name] = float(rps)


def median(values):
    values = [v for v in values if not math.isnan(v)]
    return round(statistics.median(values), 2) if values else None


summary = {}
for name, samples in rows.items():
    summary[name] = {
        "rps": statistics.median(s[0] for s in samples),
        "p50_ms": statistics.median(s[1] for s in samples),
        "p99_ms": statistics.median(s[2] for s in samples),
        "failed": sum(s[3] for s in samples),
        "rounds": len(samples),
        # The proxy's CPU time per request: user space and kernel (microseconds).
        "user_us": median(s[4] for s in samples),
        "sys_us": median(s[5] for s in samples),
    }

def us(value):
    return f"{value:.2f}" if value is not None else "-"

print(f"\n{'target':<16}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'failed':>8}{'user us':>9}{'sys us':>8}")
for name, s in summary.items():
    print(f"{name:<16}{s['rps']:>12.0f}{s['p50_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['failed']:>8}"
          f"{us(s['user_us']):>9}{us(s['sys_us']):>8}")

def ratio(a, b):
    """The median over rounds of a's req/s over b's in the same round. A round runs every target
    back to back, so a shared machine that speeds up or slows down between rounds moves both
    sides of each round's ratio alike, where it would skew a ratio of the two medians."""
    ratios = [r[a] / r[b] for r in rps_by_round.values() if a in r and b in r]
    return statistics.median(ratios) if ratios else None

# (label, gateway target, peer target, throughput ratio at least, p99 ratio at most or None)
checks = [
    ("HS256 signature mode vs HAProxy jwt_verify", "gate-hs256", "haproxy-hs256", 1.25, None),
    ("RS256 signature mode vs HAProxy jwt_verify", "gate-rs256", "haproxy-rs256", 2.4, None),
    ("issued mode vs nginx plain proxy", "gate-issued", "nginx", 0.85, None),
    ("sign-up POST vs nginx plain proxy", "gate-signup", "nginx-signup", 0.8, 1.5),
]
results = []
print()
for label, a, b, target, p99_limit in checks:
    r = ratio(a, b)
    if r is None:
        print(f"{label}: skipped")
        continue
    p99 = (summary[a]["p99_ms"], summary[b]["p99_ms"])
    meets = r >= target and (p99_limit is None or p99[0] <= p99_limit * p99[1])
    verdict = "meets" if meets else "MISSES"
    wanted = f">= {target}x" + (f", p99 <= {p99_limit}x" if p99_limit else "")
    print(f"{label}: {r:.2f}x (target {wanted}, {verdict}); p99 {p99[0]:.2f} ms vs {p99[1]:.2f} ms")
    results.append({"check": label, "ratio": round(r, 3), "target": target, "p99_ms": p99})
# With BASE_BIN: this build against another one, same rounds, same machine.
for label, a, b in [("proxied GET, this build vs base", "gate-issued", "base-issued"),
                    ("sign-up POST, this build vs base", "gate-signup", "base-signup")]:
    r = ratio(a, b)
    if r is not None:
        per_round = sorted(round(x[a] / x[b], 3) for x in rps_by_round.values() if a in x and b in x)
        print(f"{label}: {r:.3f}x (rounds {per_round})")
        results.append({"check": label, "ratio": round(r, 3), "target": None,
                        "p99_ms": (summary[a]["p99_ms"], summary[b]["p99_ms"])})
memory = {"idle_rss_mib": int(idle_kib) / 1024, "rss_1000_idle_conns_mib": int(conns_kib) / 1024,
          "startup_to_ready_ms": float(start_ms)}
print(f"\nidle RSS {memory['idle_rss_mib']:.1f} MiB (target <= 12); with 1000 idle keep-alive "
      f"connections {memory['rss_1000_idle_conns_mib']:.1f} MiB (target <= 48); start-up to ready "
      f"{memory['startup_to_ready_ms']:.0f} ms (target <= 100)")

machine = f"{cores} cores, {cpu}"
json.dump({"machine": machine, "targets": summary, "ratios": results, "memory": memory},
          open("benches/results/load.json", "w"), indent=2)

# A grouped bar chart: req/s and p99 per target, the pairs side by side.
pairs = [("issued vs nginx", "gate-issued", "nginx"), ("HS256", "gate-hs256", "haproxy-hs256"),
         ("RS256", "gate-rs256", "haproxy-rs256"), ("sign-up POST", "gate-signup", "nginx-signup")]
pairs = [p for p in pairs if p[1] in summary and p[2] in summary]
W, H, pad = 760, 300, 50
def panel(x0, title, key, unit):
    top = max(max(summary[a][key], summary[b][key]) for _, a, b in pairs) or 1
    out = [f'<text x="{x0 + 170}" y="20" font-size="14" text-anchor="middle">{title}</text>']
    group = (340 - pad) / len(pairs)
    for i, (label, a, b) in enumerate(pairs):
        for j, (name, color) in enumerate([(a, "#2b7bb9"), (b, "#b9772b")]):
            v = summary[name][key]
            h = (H - 90) * v / top
            x = x0 + pad + i * group + j * (group / 2 - 4)
            out.append(f'<rect x="{x:.0f}" y="{H - 50 - h:.0f}" width="{group / 2 - 8:.0f}" height="{h:.0f}" fill="{color}"/>')
            text = f"{v:.0f}" if key == "rps" else f"{v:.2f}"
            out.append(f'<text x="{x + group / 4 - 4:.0f}" y="{H - 55 - h:.0f}" font-size="9" text-anchor="middle">{text}</text>')
        out.append(f'<text x="{x0 + pad + i * group + group / 2 - 4:.0f}" y="{H - 35}" font-size="10" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{x0 + 12}" y="{H / 2}" font-size="10" transform="rotate(-90 {x0 + 12} {H / 2})">{unit}</text>')
    return out
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>']
svg += panel(0, "throughput (higher is better)", "rps", "req/s")
svg += panel(380, "p99 latency (lower is better)", "p99_ms", "ms")
svg.append(f'<rect x="250" y="{H - 20}" width="10" height="10" fill="#2b7bb9"/><text x="265" y="{H - 11}" font-size="10">account-gate</text>')
svg.append(f'<rect x="360" y="{H - 20}" width="10" height="10" fill="#b9772b"/><text x="375" y="{H - 11}" font-size="10">nginx / HAProxy jwt_verify</text>')
svg.append(f'<text x="{W - 5}" y="{H - 11}" font-size="9" text-anchor="end">{machine}, one core per proxy</text>')
svg.append("</svg>")
open("benches/results/load.svg", "w").write("\n".join(svg))
print("wrote benches/results/load.json and benches/results/load.svg")
