"""Redis and nginx as a scaled-out deployment runs them, on 127.0.0.1 only: the shared
session store and the gRPC load balancer in front of several rnnserve-server replicas.
Used by the scale-out benchmark (bench/scaleout.py) and the failover tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


class MissingProgram(RuntimeError):
    """redis-server or nginx is not installed (make system-deps installs both)."""


class RedisServer:
    """A real redis-server (Debian's package) on a Unix socket in a temporary directory,
    nothing persisted; ``url`` is what ``session_store`` takes. With a ``password`` it
    requires that password of every client (``requirepass``)."""

    def __init__(self, directory: Path, password: str = "") -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}" + (f"?password={self.password}" if self.password else "")

    def __enter__(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingProgram("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def flush(self) -> None:
        subprocess.run(
            [
                "redis-cli",
                "-s",
                str(self.socket),
                *(["-a", self.password] if self.password else []),
                "FLUSHALL",
            ],
            check=True,
            capture_output=True,
        )


class Nginx:
    """Debian's nginx as a gRPC load balancer: round robin over ``upstreams``, no
    stickiness, a failed replica skipped for 10 s; docker/balancer/nginx.conf for
    loopback. It listens on 127.0.0.1:<port>."""

    def __init__(self, directory: Path, upstreams: list[str]) -> None:
        self.directory = directory
        self.port = free_port()
        servers = "\n".join(f"    server {u} max_fails=1 fail_timeout=10s;" for u in upstreams)
        (directory / "nginx.conf").write_text(
            NGINX_CONFIG.format(directory=directory, port=self.port, servers=servers)
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise MissingProgram("nginx is not installed (apt-get install nginx)")
        self.process = subprocess.Popen(
            [
                binary,
                "-c",
                str(self.directory / "nginx.conf"),
                "-p",
                str(self.directory),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "error.log").read_text(errors="replace")
                    raise RuntimeError(f"nginx did not start: {log[-2000:]}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


NGINX_CONFIG = """
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {directory}/body;
  upstream rnnserve {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    client_max_body_size 16m;
    grpc_next_upstream error timeout;
    grpc_connect_timeout 2s;
    location / {{
      grpc_pass grpc://rnnserve;
      grpc_read_timeout 30s;
    }}
    location ~ ^/rnnserve\\.v1\\.RnnServe/(StepStream|StepMany|Generate)$ {{
      grpc_pass grpc://rnnserve;
      grpc_read_timeout 1h;
      grpc_send_timeout 1h;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
