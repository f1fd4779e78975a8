"""A loopback object server for benchmarks: Debian's nginx (C: Range, multi-range, ETag and
If-Match on static files) with its Lua module adding a delay to every request without blocking
others, and counting requests and body bytes.

A Python server on the same 2 cores takes CPU from the client it is meant to measure (seen:
batched cold reads at 82 chips/s against a Python server, 208 against nginx, same client).

    with NginxServer(root, delay=0.02) as server:   # root: the folder served at server.url
        ...                                         # GET {server.url}/_stats ->
                                                    #   {"requests", "bytes"}
        server.delay = 0.05                         # changed on the running server
        server.stats(reset=True)

Paths ``/a/<name>/<rest>`` are served from ``root/<rest>``: any number of distinct URLs for the
same files (a benchmark's 10,000 "items" can share a few COGs, and no URL-keyed cache helps).

Needs ``nginx-light`` and ``libnginx-mod-http-lua``; ``ensure_nginx()`` installs them with
apt-get when missing (root, Debian). Everything nginx writes goes into a temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self

MODULES = Path("/usr/lib/nginx/modules")
PACKAGES = ("nginx-light", "libnginx-mod-http-lua")

CONFIG = """
user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_lua_module.so;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    sendfile on;
    # not tcp_nopush (TCP_CORK with sendfile): it held the tail of about one response in
    # eighteen for 40 ms (6 concurrent range GETs: a 64-66 ms request in one round of three)
    tcp_nopush off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    max_ranges 4096;
    lua_shared_dict counters 1m;
    init_by_lua_block {{ ngx.shared.counters:set("delay", {delay}) }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /_stats {{
            content_by_lua_block {{
                local c = ngx.shared.counters
                local out = string.format('{{"requests": %d, "bytes": %d, "delay": %s}}',
                    c:get("requests") or 0, c:get("bytes") or 0, tostring(c:get("delay") or 0))
                if ngx.var.arg_reset then c:set("requests", 0); c:set("bytes", 0) end
                ngx.header["Content-Type"] = "application/json"
                ngx.say(out)
            }}
        }}
        location = /_delay {{
            content_by_lua_block {{
                ngx.shared.counters:set("delay", tonumber(ngx.var.arg_s) or 0)
                ngx.say("ok")
            }}
        }}
        location ~ ^/a/[^/]+/(?<rest>.*)$ {{
            alias {root}/$rest;
            access_by_lua_block {{
                local d = ngx.shared.counters:get("delay") or 0
                if d > 0 then ngx.sleep(d) end
            }}
            log_by_lua_block {{
                local c = ngx.shared.counters
                c:incr("requests", 1, 0)
                c:incr("bytes", tonumber(ngx.var.body_bytes_sent) or 0, 0)
            }}
        }}
        location / {{
            root {root};
            access_by_lua_block {{
                local d = ngx.shared.counters:get("delay") or 0
                if d > 0 then ngx.sleep(d) end
            }}
            log_by_lua_block {{
                local c = ngx.shared.counters
                c:incr("requests", 1, 0)
                c:incr("bytes", tonumber(ngx.var.body_bytes_sent) or 0, 0)
            }}
        }}
    }}
}}
"""


def ensure_nginx() -> str:
    """The nginx binary, after installing Debian's nginx-light and its Lua module if missing."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found and (MODULES / "ngx_http_lua_module.so").exists():
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"needs nginx with its Lua module: apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        capture_output=True,
    )
    return shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxServer:
    """nginx serving ``root`` on 127.0.0.1 with ``delay`` seconds added to every request."""

    def __init__(self, root: Path | str, delay: float = 0.0) -> None:
        self.root = Path(root).resolve()
        self._delay = float(delay)
        self.proc: subprocess.Popen | None = None
        self.prefix: Path | None = None
        self.url = ""

    def start(self) -> Self:
        binary = ensure_nginx()
        self.prefix = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        for _ in range(5):  # a port taken between the probe and nginx's bind: try another
            port = _free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(
                CONFIG.format(
                    prefix=self.prefix,
                    modules=MODULES,
                    delay=self._delay,
                    port=port,
                    root=self.root,
                )
            )
            self.proc = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.stats()
                    return self
                except OSError:
                    time.sleep(0.05)
            err = (
                self.proc.stderr.read().decode()
                if self.proc.poll() is not None and self.proc.stderr
                else ""
            )
            self.stop()
            if "Address already in use" not in err:
                raise RuntimeError(f"nginx did not start: {err[-2000:]}")
        raise RuntimeError("nginx did not start: no free port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to the master: fast shutdown of it and its worker
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)

    @property
    def stats_url(self) -> str:
        return f"{self.url}/_stats"

    def stats(self, reset: bool = False) -> dict:
        """``{"requests", "bytes", "delay"}`` since the last reset (the stats requests excluded)."""
        with urllib.request.urlopen(self.stats_url + ("?reset=1" if reset else ""), timeout=5) as r:
            return json.load(r)

    @property
    def delay(self) -> float:
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._delay = float(seconds)
        with urllib.request.urlopen(f"{self.url}/_delay?s={self._delay}", timeout=5) as r:
            r.read()
