"""Real services on loopback for the integration tests: PostgreSQL + pgstac behind
stac-fastapi-pgstac. Started by the tests themselves; nothing here is mocked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PG_BIN = Path(os.environ.get("STACCHIP_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    # PostgreSQL refuses to run as root
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


class StacApi:
    """PostgreSQL on a throwaway data dir + pgstac + stac-fastapi-pgstac, on 127.0.0.1."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="stacchip-pg-"))
        self.pg_port, self.api_port = free_port(), free_port()
        self.dsn = f"postgresql://postgres:postgres@127.0.0.1:{self.pg_port}/postgres"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.api = None

    def start(self) -> StacApi:
        data = self.tmp / "data"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres")
            shutil.chown(data, "postgres")
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"])
        _as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(self.tmp / "pg.log"),
                "-o",
                (
                    f"-p {self.pg_port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off"
                ),
                "start",
            ]
        )
        self.pypgstac("migrate")
        env = {
            **os.environ,
            "PGUSER": "postgres",
            "PGPASSWORD": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg_port),
            "PGDATABASE": "postgres",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASS": "postgres",
            "POSTGRES_HOST_READER": "127.0.0.1",
            "POSTGRES_HOST_WRITER": "127.0.0.1",
            "POSTGRES_PORT": str(self.pg_port),
            "POSTGRES_DBNAME": "postgres",
        }
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.tmp / "api.log", "w"),  # noqa: SIM115 - the server's log, open while it runs
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/collections", timeout=2)
                return self
            except OSError:
                if self.api.poll() is not None:
                    raise RuntimeError((self.tmp / "api.log").read_text()[-3000:])
                time.sleep(0.3)
        raise RuntimeError(
            "stac-fastapi-pgstac did not start: " + (self.tmp / "api.log").read_text()[-3000:]
        )

    def pypgstac(self, *args: str) -> None:
        exe = Path(sys.executable).with_name("pypgstac")
        subprocess.run(
            [str(exe), *args, "--dsn", self.dsn], check=True, capture_output=True, text=True
        )

    def load(self, collections: list[dict], items: list[dict]) -> None:
        for kind, rows in (("collections", collections), ("items", items)):
            if not rows:
                continue
            path = self.tmp / f"{kind}.ndjson"
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            self.pypgstac("load", kind, str(path), "--method", "upsert")

    def stop(self) -> None:
        """Stop whatever started (safe after a failed start)."""
        if self.api is not None:
            self.api.terminate()
            self.api.wait(10)
        try:
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.tmp / "data"), "-m", "immediate", "stop"]
            )
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)
