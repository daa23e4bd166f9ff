"""Starts `account-gate run --config CONFIG` and prints 'milliseconds-to-ready pid'."""
import subprocess
import sys
import time
import urllib.request

binary, config, admin_port = sys.argv[1], sys.argv[2], sys.argv[3]
start = time.perf_counter()
proc = subprocess.Popen([binary, "run", "--config", config], stderr=subprocess.DEVNULL)
deadline = start + 10
while time.perf_counter() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
            if r.status == 200:
                break
    except OSError:
        time.sleep(0.001)
print(f"{(time.perf_counter() - start) * 1000:.1f} {proc.pid}")
