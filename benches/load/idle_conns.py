"""Opens N keep-alive connections to PORT, one request each, holds them, prints PID's RSS in KiB."""
import resource
import socket
import sys
import time

port, count, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
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
time.sleep(0.5)
with open(f"/proc/{pid}/status") as status:
    rss = next(line.split()[1] for line in status if line.startswith("VmRSS"))
print(rss)
for s in held:
    s.close()
