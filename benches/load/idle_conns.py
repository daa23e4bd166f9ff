"""Opens N keep-alive connections to PORT, one request each, holds them, prints PID's RSS in KiB;
with SETTLE (seconds), also the RSS that much later, the connections still held."""
import resource
import socket
import sys
import time

port, count, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
settle = float(sys.argv[4]) if len(sys.argv) > 4 else None
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
request = b"GET /v2/carts HTTP/1.1\r\nHost: bench\r\n\r\n"
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request)
    held.append(s)
for s in held:
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)


def rss():
    with open(f"/proc/{pid}/status") as status:
        return next(line.split()[1] for line in status if line.startswith("VmRSS"))


time.sleep(0.5)
figures = [rss()]
if settle is not None:
    time.sleep(settle)
    figures.append(rss())
print(*figures)
for s in held:
    s.close()
