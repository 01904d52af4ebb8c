"""Test support: real rnnserve servers (a thread of the test process, or processes of
their own), and the real Redis and nginx a scaled-out deployment uses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bench.cluster import MissingProgram, Nginx, RedisServer
from rnnserve_server.app import RunningServer, create_server
from rnnserve_server.config import ServerConfig
from rnnserve_server.manifest import MANIFEST_FILE

T = TypeVar("T")
P = TypeVar("P", RedisServer, Nginx)

# The state keys of the test servers that import each other's exports or share a session
# store, as a deployment's replicas would (any string of 32+ characters is a key).
SHARED_STATE_KEYS = "tests-shared-state-key-0123456789abcdef"


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
        self.call(_cancel_the_rest())
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


async def _cancel_the_rest() -> None:
    """What asyncio.run does at its end: tasks still pending (sse-starlette's shutdown
    watcher of the HTTP front runs until the loop ends) are cancelled, not left behind."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


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


def as_format_1(manifest: dict[str, Any]) -> None:
    """A manifest as written before format 2: none of the later fields."""
    manifest["format_version"] = 1
    for key in ("input", "state"):
        manifest.pop(key, None)
    manifest["output"].pop("values", None)
    manifest["initial_state"].pop("file", None)


def embed_weights(package: Path, format_version: int) -> None:
    """Turn a format-3 package into one of an older format (1 or 2) with the same
    weights: each graph embeds its own copy of weights.bin's tensors, which weights.npz
    holds by their graph names, and weights.bin goes."""
    import onnx
    from onnx import numpy_helper

    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for graph in sorted(package.glob("*.onnx")):
        model = onnx.load(str(graph))  # reads the external data from weights.bin
        for tensor in model.graph.initializer:
            arrays.setdefault(tensor.name, numpy_helper.to_array(tensor))
        onnx.save(model, str(graph))  # embedded: no external data
    np.savez(package / "weights.npz", **arrays)  # type: ignore[arg-type]
    (package / "weights.bin").unlink()

    def older(manifest: dict[str, Any]) -> None:
        if format_version == 1:
            as_format_1(manifest)
        manifest.update(format_version=format_version, weights_file="weights.npz")

    edit_manifest(package, older)


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


SERVER = [str(Path(sys.executable).with_name("rnnserve-server"))]


class ServerProcess:
    """rnnserve-server as its own process on 127.0.0.1:<free port>; its whole output
    (stdout and stderr, in order) kept in ``lines``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*SERVER, "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.port = 0
        self.http_port = 0  # the OpenAI-compatible front's, where --openai-port is given
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            http = re.search(r"OpenAI-compatible HTTP front on \S+:(\d+)/v1", line)
            if http:
                self.http_port = int(http.group(1))
            found = re.search(r"serving rnnserve\.v1\.RnnServe on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        assert self.port, "".join(self.lines)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self._ended()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def openai_port(self) -> int:
        """The OpenAI-compatible HTTP front's port (``--openai-port 0``), as logged at start."""
        pattern = r"OpenAI-compatible HTTP front on https?://127\.0\.0\.1:(\d+)/v1"
        (port,) = [int(m.group(1)) for line in self.lines if (m := re.search(pattern, line))]
        return port

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
        self._reader.join(10)  # the output read to its end, then the pipe closed
        assert self.process.stdout is not None
        self.process.stdout.close()
        return status


@contextlib.contextmanager
def started(program: P) -> Iterator[P]:
    """Start a RedisServer or Nginx for a test; where the program is missing, skip the
    test, except in CI (CI=true), which must have installed it (make system-deps)."""
    try:
        program.__enter__()
    except MissingProgram as missing:
        if os.environ.get("CI"):
            raise
        import pytest

        pytest.skip(str(missing))
    try:
        yield program
    finally:
        program.__exit__(None, None, None)


# A repository with one model of each kind besides the tiny language model, made from the
# tiny package (build_zoo): a classifier, an encoder-decoder, a conditional generator.
CLASSIFIER = "labelled"
ENCODER_DECODER = "encdec"
CONDITIONAL = "moods"
CONDITIONS = ["calm", "wild"]


def add_initial_state_graph(package: Path, kind: str, table: np.ndarray) -> None:
    """Give a package an `encoder` or `condition` graph whose state is a row lookup in
    `table` (the sum of the source tokens' rows, squashed; or the condition's row)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if kind == "encoder":
        inputs = [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "time"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ]
        nodes = [
            helper.make_node("Gather", ["table", "tokens"], ["rows"]),
            helper.make_node("ReduceSum", ["rows", "one"], ["summed"], keepdims=0),
            helper.make_node("Tanh", ["summed"], ["picked"]),
        ]
    else:
        inputs = [helper.make_tensor_value_info("condition", TensorProto.INT64, ["batch"])]
        nodes = [helper.make_node("Gather", ["table", "condition"], ["picked"])]
    nodes.append(helper.make_node("Unsqueeze", ["picked", "zero"], ["state"]))  # one layer
    constants = {"table": table, "zero": np.array([0]), "one": np.array([1])}
    graph = helper.make_graph(
        nodes,
        kind,
        inputs,
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "batch", table.shape[1]])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads
    onnx.checker.check_model(model)
    onnx.save(model, package / f"{kind}.onnx")

    def declare(manifest: dict[str, object]) -> None:
        graphs = manifest["graphs"]
        assert isinstance(graphs, dict)
        graphs[kind] = {
            "file": f"{kind}.onnx",
            "inputs": [i.name for i in inputs],
            "outputs": ["state"],
        }
        manifest["initial_state"] = {"kind": kind, "token": "bos"}
        manifest["shape"] = "seq2seq" if kind == "encoder" else "one-to-many"
        if kind == "condition":
            manifest["conditions"] = CONDITIONS

    edit_manifest(package, declare)


def build_zoo(tiny_package: Path, root: Path, model_name: str) -> Path:
    manifest = json.loads((tiny_package / "manifest.json").read_text())
    size, hidden = manifest["tokenizer"]["size"], manifest["hidden_size"]
    assert manifest["layers"] == 1
    copy_package(tiny_package, root, model_name)
    labelled = copy_package(tiny_package, root, CLASSIFIER)
    labels = [f"class-{i}" for i in range(size)]
    edit_manifest(labelled, lambda m: m.update(output={"kind": "labels", "labels": labels}))
    table = np.random.default_rng(0).normal(0, 0.5, (size, hidden)).astype(np.float32)
    add_initial_state_graph(copy_package(tiny_package, root, ENCODER_DECODER), "encoder", table)
    conditional = copy_package(tiny_package, root, CONDITIONAL)
    add_initial_state_graph(conditional, "condition", table[: len(CONDITIONS)])
    return root


TRITONCLIENT_DRIVER = Path(__file__).parent / "integration" / "tritonclient_driver.py"


class TritonClient:
    """tritonclient[grpc] from PyPI, in its own virtual environment (make tritonclient),
    as a subprocess: ``run`` hands it a plan of calls (see tritonclient_driver.py) and
    returns what each call returned."""

    def __init__(self, python: Path, address: str, headers: dict[str, str] | None = None) -> None:
        self.python, self.address, self.headers = python, address, headers or {}

    def run(self, *calls: dict[str, Any]) -> list[Any]:
        plan = {"address": self.address, "headers": self.headers, "calls": list(calls)}
        done = subprocess.run(
            [str(self.python), str(TRITONCLIENT_DRIVER)],
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def infer(self, **request: Any) -> Any:
        (result,) = self.run({"call": "infer", "request": request})
        return result

    def stream(self, *requests: dict[str, Any]) -> list[Any]:
        (results,) = self.run({"call": "stream", "requests": list(requests)})
        return results  # type: ignore[no-any-return]


def assert_top_close(got: Any, expected: Any, atol: float = 2e-6) -> None:
    """Two step results give every token of ``expected.top`` the same probability, to
    float32 rounding (single tokens of several sessions share a batch run)."""
    probabilities = {t.id: t.probability for t in got.top}
    np.testing.assert_allclose(
        [probabilities[t.id] for t in expected.top],
        [t.probability for t in expected.top],
        rtol=0,
        atol=atol,
    )


def exported_metrics(models: Path, model_name: str) -> list[Any]:
    """The metric families (prometheus_client's parser) a real server exports after a step,
    a generation and a cancelled generation, so that every family has samples."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from rnnserve import Client

    with (
        ServerThread(server_config(models, metrics_port=0)) as server,
        Client(server.address) as client,
    ):
        with client.create_session(model_name) as session:
            session.step(text="a")
            session.generate_text("b", max_tokens=3)
            stream = session.generate(max_tokens=4000, temperature=0)
            next(stream)
            stream.close()  # cancels it
        assert server.running is not None
        url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"

        def scrape() -> list[Any]:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return list(text_string_to_metric_families(reply.read().decode()))

        deadline = time.monotonic() + 10
        while not any(f.name == "rnnserve_cancellations" and f.samples for f in scrape()):
            assert time.monotonic() < deadline, "the cancellation was never counted"
            time.sleep(0.05)
        return scrape()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a server's metrics endpoint, by name and labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def hold_streams(
    client: Any, session_id: str, count: int, release: threading.Event
) -> list[threading.Thread]:
    """``count`` StepStreams, each answered once and then held open until ``release``."""
    from rnnserve import StepInput  # the client library: only where a test streams

    answered = threading.Semaphore(0)

    def held() -> None:
        def inputs() -> Iterator[Any]:
            yield StepInput(session_id, [5])
            release.wait(30)

        results = client.step_stream(inputs())
        next(results)  # the server has answered: the call is in flight there
        answered.release()
        list(results)

    threads = [threading.Thread(target=held) for _ in range(count)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert answered.acquire(timeout=30)
    return threads
