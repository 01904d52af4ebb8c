"""Test support: real rnnserve servers (a thread of the test process, or processes of
their own), and the real Redis and nginx a scaled-out deployment uses."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rnnserve_server.app import RunningServer, create_server
from rnnserve_server.config import ServerConfig
from rnnserve_server.modelpackage import MANIFEST_FILE

T = TypeVar("T")


class ServerThread:
    """A real rnnserve server on 127.0.0.1:<free port>, its event loop in a thread.

    ``call`` runs a coroutine on the server's loop, for tests that look inside (session
    counts, slots); everything else goes through the real client over the socket.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: RunningServer | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.running = self.call(create_server(self.config))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running is not None:
            self.call(self.running.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the server's loop thread (the store is not thread-safe)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def server_config(models: Path, **overrides: Any) -> ServerConfig:
    return dataclasses.replace(
        ServerConfig(models=models, host="127.0.0.1", port=0, shutdown_grace_s=0), **overrides
    ).validate()


def copy_package(src: Path, root: Path, name: str, version: int = 1) -> Path:
    """Copy a package under a new name/version (manifest updated to match)."""
    dst = root / name / str(version)
    shutil.copytree(src, dst)
    edit_manifest(dst, lambda m: m.update(name=name, version=version))
    return dst


def edit_manifest(package: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = package / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_test_certificates(folder: Path) -> Path:
    """A test CA (ca.pem), a server certificate for localhost/127.0.0.1 (server.pem,
    server.key) and a client certificate (client.pem, client.key), made by openssl."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-days", "2",
            "-subj", "/CN=rnnserve-test-ca", "-out", "ca.pem", cwd=folder)  # fmt: skip
    for name, subject, extensions in (
        ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        ("client", "/CN=rnnserve-test-client", ""),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-subj", subject, "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        (folder / f"{name}.ext").write_text(extensions)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=folder)  # fmt: skip
    return folder


class RedisServer:
    """A real redis-server (Debian's package) on a Unix socket in a temporary directory,
    nothing persisted; ``url`` is what ``session_store`` takes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI"):
                raise RuntimeError(message)  # CI must install it: never skip silently there
            import pytest

            pytest.skip(message)
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
            ["redis-cli", "-s", str(self.socket), "FLUSHALL"], check=True, capture_output=True
        )


SERVER = [str(Path(sys.executable).with_name("rnnserve-server"))]


class ServerProcess:
    """rnnserve-server as its own process on 127.0.0.1:<free port>; its log kept."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*SERVER, "--host", "127.0.0.1", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.port = 0
        assert self.process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"serving rnnserve\.v1\.RnnServe on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        assert self.port, "".join(self.lines)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        """SIGTERM; the exit status once it has exited."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self._ended()

    def kill(self) -> None:
        """SIGKILL: the process dies at once, mid-call, as in a crash."""
        self.process.kill()
        self._ended()

    def _ended(self) -> int:
        status = self.process.wait(30)
        self._reader.join(10)  # the log read to its end, then the pipe closed
        assert self.process.stderr is not None
        self.process.stderr.close()
        return status


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
            message = "nginx is not installed (apt-get install nginx-light)"
            if os.environ.get("CI"):
                raise RuntimeError(message)
            import pytest

            pytest.skip(message)
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
