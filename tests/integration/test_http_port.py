"""The HTTP port beside gRPC: /metrics, /healthz, /readyz (the gRPC health service's
truth) and nothing else, asked with urllib and with curl as probes and scrapers do."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ServerThread, copy_package, server_config

from rnnserve import Client


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def grpc_health(server: ServerThread) -> str:
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def http_port(server: ServerThread) -> int:
    assert server.running is not None and server.running.metrics_port is not None
    return server.running.metrics_port


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(models_dir, metrics_port=0)) as running:
        yield running


def test_metrics_hold_the_servers_and_the_default_collectors(
    served: ServerThread, model_name: str
) -> None:
    with Client(served.address) as client, client.create_session(model_name) as session:
        session.step(text="a")
    status, page = get(http_port(served), "/metrics")
    assert status == 200
    assert f'rnnserve_requests_total{{code="OK",method="Step",model="{model_name}/1"}}' in page
    for default in ("process_cpu_seconds_total", "python_info", "python_gc_collections_total"):
        assert f"\n{default}" in page, default


@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsz", "/v2/health/ready", "/healthz/x"])
def test_every_other_path_is_not_found(served: ServerThread, path: str) -> None:
    status, body = get(http_port(served), path)
    assert status == 404
    assert body == "not found; paths: /metrics, /healthz, /readyz\n"


def test_probes_answer_as_the_grpc_health_service(served: ServerThread) -> None:
    port = http_port(served)
    assert get(port, "/healthz") == (200, "alive\n")
    assert grpc_health(served) == "SERVING"
    assert get(port, "/readyz") == (200, "SERVING\n")
    assert get(port, "/readyz", method="POST")[0] == 405
    curl = shutil.which("curl")
    if curl is not None:
        ready = [curl, "-sf", f"http://127.0.0.1:{port}/readyz"]
        shown = subprocess.run(ready, capture_output=True, text=True, check=False)
        assert (shown.returncode, shown.stdout) == (0, "SERVING\n")
        root = [curl, "-sf", f"http://127.0.0.1:{port}/"]
        missing = subprocess.run(root, capture_output=True, check=False)
        assert missing.returncode == 22  # curl -f: an HTTP error status


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_readiness_follows_the_models_and_the_shutdown(tmp_path: Path, tiny_package: Path) -> None:
    with ServerThread(server_config(tmp_path, metrics_port=0)) as server:
        port = http_port(server)
        assert grpc_health(server) == "NOT_SERVING"
        assert get(port, "/readyz") == (503, "NOT_SERVING\n")
        assert get(port, "/healthz") == (200, "alive\n")  # alive, only not ready
        copy_package(tiny_package, tmp_path, "arrived")
        with Client(server.address) as client:
            client.reload_models()
        wait_for(lambda: get(port, "/readyz")[0] == 200)
        assert get(port, "/readyz") == (200, "SERVING\n")
        assert grpc_health(server) == "SERVING"
        assert server.running is not None
        server.call(server.running.health.shutdown())  # what SIGTERM does first
        assert get(port, "/readyz") == (503, "NOT_SERVING\n")
        assert grpc_health(server) == "NOT_SERVING"
