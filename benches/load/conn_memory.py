"""Resident memory a gateway spends per client connection: idle HTTP/1 keep-alive connections
(one request answered each), and h2c connections holding max_concurrent_streams requests in
flight each (to an upstream that never answers, so every stream stays open).

    python3 benches/load/conn_memory.py target/release/account-gate [IDLE_N] [H2_N]

Starts its own upstream (a small asyncio server: /answer is answered, anything else is held)
and a gateway with limits wide enough that nothing is closed while it measures. Prints the
RSS before and after each step and the difference per connection. The h2 figure includes what
the gateway holds per in-flight stream: the request, its upstream connection (one each: the
upstream speaks HTTP/1.1) and the answer's future.
"""
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1]
IDLE_N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
H2_N = int(sys.argv[3]) if len(sys.argv) > 3 else 20
STREAMS = 100

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

UPSTREAM = r'''
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
async def serve(reader, writer):
    held.append(writer)
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /answer"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        else:
            await asyncio.sleep(3600)
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(l.split()[1] for l in status if l.startswith("VmRSS")))


def sample(admin, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def wait(what, condition, within=60):
    deadline = time.time() + within
    while not condition():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_get(stream, path, authority):
    # HPACK from the static table: :method GET (2), :scheme http (6), :path and :authority as
    # literals without indexing (name indexes 4 and 1).
    block = bytes([0x82, 0x86])
    block += bytes([0x04, len(path)]) + path.encode()
    block += bytes([0x01, len(authority)]) + authority.encode()
    return h2_frame(0x1, 0x5, stream, block)  # HEADERS, END_STREAM | END_HEADERS


def idle_http1(port, admin):
    held = []
    for _ in range(IDLE_N):
        # One at a time, so the upstream side stays one pooled connection.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /answer HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while not data.endswith(b"ok"):
            data += s.recv(4096)
        held.append(s)
    return held


def h2_at_max_streams(port, admin):
    held = []
    for _ in range(H2_N):
        s = socket.create_connection(("127.0.0.1", port))
        frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(0x4, 0, 0, b"")
        for i in range(STREAMS):
            frames += h2_get(2 * i + 1, "/hold", "bench")
        s.sendall(frames)
        held.append(s)
    wait("every stream in flight",
         lambda: sample(admin, "account_gate_requests_in_flight") >= H2_N * STREAMS, within=120)
    return held


def measure(scenario, count, up_port):
    """RSS of a fresh gateway before and after `scenario` opened `count` connections."""
    port, admin = free_port(), free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
max_connections = 100000
header_read_timeout = "300s"
idle_timeout = "300s"
worker_threads = 1
[upstream]
url = "http://127.0.0.1:{up_port}"
max_connections = 100000
response_timeout = "300s"
[log]
level = "warn"
""")
    config.close()
    gate = subprocess.Popen([BIN, "run", "--config", config.name])
    try:
        def ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz").status == 200
            except OSError:
                return False
        wait("the gateway", ready)
        for _ in range(50):  # warm the allocator and the request path
            urllib.request.urlopen(f"http://127.0.0.1:{port}/answer").read()
        time.sleep(0.5)
        before = rss_kib(gate.pid)
        held = scenario(port, admin)
        time.sleep(1)
        after = rss_kib(gate.pid)
        for s in held:
            s.close()
        return dict(connections=count, rss_before_kib=before, rss_after_kib=after,
                    bytes_per_connection=(after - before) * 1024 // count)
    finally:
        gate.terminate()
        gate.wait()
        os.unlink(config.name)


upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
try:
    up_port = int(upstream.stdout.readline())
    results = {
        "idle_http1": measure(idle_http1, IDLE_N, up_port),
        "h2_at_max_streams": dict(streams_each=STREAMS,
                                  **measure(h2_at_max_streams, H2_N, up_port)),
    }
    print(json.dumps(results, indent=2))
finally:
    upstream.terminate()
