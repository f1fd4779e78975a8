"""A loopback HTTP object server for tests and benchmarks: files under a root, GET/HEAD with
single ``Range`` requests, ETags and ``If-Match``, a per-request delay, request/byte counters,
and faults (a status returned N times, a truncated body, a stall) to test retries and errors.
``GET /_stats`` returns the counters as JSON (for a benchmark's client in another process)."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    def __init__(self, root: str | Path, delay: float = 0.0) -> None:
        self.root = Path(root)
        self.delay = delay
        self.requests = 0
        self.bytes = 0
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, range)
        self.faults: dict[str, list] = {}  # path -> [503, 503] / ["truncate"] / ["stall"] / [403]
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle, the body of every request on a
            # kept-alive connection waited for the client's delayed ACK (a second range read of
            # a file took 44-46 ms instead of 1-2)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = self.path.split("?")[0]
                if path == "/_stats":  # the counters, for a client in another process; not counted
                    with server._lock:
                        data = json.dumps(
                            {"requests": server.requests, "bytes": server.bytes}
                        ).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests += 1
                    server.log.append((self.command, self.path, rng))
                    fault = (
                        server.faults.get(path, [None]).pop(0) if server.faults.get(path) else None
                    )
                if server.delay:
                    time.sleep(server.delay)
                if fault == "stall":
                    time.sleep(30)
                    return
                if isinstance(fault, int):
                    self.send_response(fault)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                st = file.stat()
                size = st.st_size
                etag = f'"{size:x}-{st.st_mtime_ns:x}"'
                wanted = self.headers.get("If-Match")
                if wanted and wanted.strip() not in ("*", etag):  # as object stores do (RFC 9110)
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, size
                status = 200
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    if a == "":
                        start, end = max(0, size - int(b)), size
                    else:
                        start, end = int(a), min(size, int(b) + 1 if b else size)
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Last-Modified", self.date_time_string(st.st_mtime))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                with open(file, "rb") as f:
                    f.seek(start)
                    data = f.read(end - start)
                if fault == "truncate":
                    data = data[: len(data) // 2]
                    self.wfile.write(data)
                    self.close_connection = True
                    return
                with server._lock:
                    server.bytes += len(data)
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            # object stores accept hundreds of connections at once; the default backlog of 5
            # drops SYNs that a batch's burst of new connections sends (1 s retransmits: measured,
            # a 32-chip batch of 10 bands took 16 s instead of 0.4 s)
            request_queue_size = 1024

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.bytes = 0
            self.log.clear()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # serve a folder: python tests/rangeserver.py ROOT [DELAY]
    import sys

    srv = RangeServer(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0).start()
    print(srv.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
    os._exit(0)
