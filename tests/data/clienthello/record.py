#!/usr/bin/env python3
"""Records the ClientHello a real TLS client sends, for the SNI reader's tests.

Usage: record.py PORT OUTFILE   (then point the client at 127.0.0.1:PORT)

Accepts one connection on 127.0.0.1:PORT, reads TLS records until the whole handshake message
(the ClientHello) has arrived, writes exactly those bytes to OUTFILE and closes. Only
loopback is used. See README.md beside this file for the clients and commands used.
"""
import socket
import sys


def read_exact(conn, buf, n):
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            raise SystemExit("client closed before a full ClientHello")
        buf += chunk
    return buf


def read_hello(conn):
    """The raw bytes of the records that carry the first handshake message."""
    buf, out, hs = b"", b"", b""
    while len(hs) < 4 or len(hs) < 4 + int.from_bytes(hs[1:4], "big"):
        buf = read_exact(conn, buf, 5)
        length = int.from_bytes(buf[3:5], "big")
        buf = read_exact(conn, buf, 5 + length)
        hs += buf[5 : 5 + length]
        out += buf[: 5 + length]
        buf = buf[5 + length :]
    return out


def main():
    port, outfile = int(sys.argv[1]), sys.argv[2]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    conn, _ = srv.accept()
    hello = read_hello(conn)
    with open(outfile, "wb") as f:
        f.write(hello)
    conn.close()
    print(f"{outfile}: {len(hello)} bytes")


if __name__ == "__main__":
    main()
