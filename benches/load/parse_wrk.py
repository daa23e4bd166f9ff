"""Reads wrk --latency output on stdin; prints one TSV row: name round rps p50_ms p99_ms bad
user_us sys_us. The last two are the proxy's CPU time per request, in user space and in the
kernel, from the clock ticks of /proc/<pid>/stat during the run (arguments 3 to 5: user ticks,
system ticks, ticks per second); nan when they are not given (the direct target has no proxy)."""
import re
import sys

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


out = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
bad = int(non2xx.group(1)) if non2xx else 0
bad += sum(int(g) for g in errors.groups()) if errors else 0
requests = int(re.search(r"(\d+) requests in", out).group(1))
user_us = sys_us = float("nan")
if len(sys.argv) == 6 and requests:
    user, system, hz = (int(a) for a in sys.argv[3:6])
    user_us, sys_us = (1e6 * ticks / hz / requests for ticks in (user, system))
print(f"{sys.argv[1]}\t{sys.argv[2]}\t{rps:.1f}\t{ms(lat.get('50', '')):.3f}\t{ms(lat.get('99', '')):.3f}\t{bad}"
      f"\t{user_us:.2f}\t{sys_us:.2f}")
