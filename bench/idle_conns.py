#!/usr/bin/env python3
"""Hold N idle keep-alive connections to the gateway (scripts/bench.sh: RSS with 1,000 idle
connections). Each connection makes one GET /healthz (HTTP/1.1, keep-alive) and reads its
answer, so the server has accepted it and served a request on it; then all sit idle. Prints
`ready N` once every connection is idle, then holds them until stdin closes."""
import socket
import sys
from urllib.parse import urlsplit


def main():
    base, n = sys.argv[1], int(sys.argv[2])
    u = urlsplit(base)
    conns = []
    req = ("GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n\r\n" % u.netloc).encode()
    for _ in range(n):
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("connection closed before an answer")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit("unexpected answer: %r" % head[:40])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            body += s.recv(4096)
        conns.append(s)
    print("ready %d" % len(conns), flush=True)
    sys.stdin.read()
    # Every connection must still be open: a server that dropped idle ones would look lean.
    alive = 0
    for s in conns:
        s.setblocking(False)
        try:
            alive += 0 if s.recv(1) == b"" else 1
        except BlockingIOError:
            alive += 1
    print("alive %d" % alive, flush=True)


if __name__ == "__main__":
    main()
