#!/usr/bin/env python3
"""Static file server for the image tests: serve.py DIR [CERT KEY].

Binds 127.0.0.1 on a free port, prints the port on stdout (one line), then serves DIR over
http (or https with CERT/KEY). Query strings are ignored (so `/app?ac-discovery=1` serves the
file `DIR/app`). Each request is logged on stderr.
"""
import functools
import http.server
import ssl
import sys


def main():
    root = sys.argv[1]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if len(sys.argv) > 3:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
