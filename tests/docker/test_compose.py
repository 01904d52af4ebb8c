"""End to end through Docker: build both images, run docker-compose.yml with the tiny preset,
and talk to the containerised server from this machine's Python client.

Runs only when asked for: `make test-docker` (`pytest -m docker tests/docker`), or with
RNNSERVE_TEST_DOCKER=1. It uses the Docker engine at DOCKER_HOST (or the default socket) if one
answers, else starts a private one with scripts/dockerd.sh (root) and stops it afterwards. The
base image comes from scripts/offline-base-images.sh where no registry is reachable. All
traffic stays on 127.0.0.1 and the stack's own network. First run ~5 minutes (image builds),
later runs ~1 minute (cached layers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVER_IMAGE = "rnnserve-server:latest"
TRAINER_IMAGE = "rnnserve-trainer:latest"
DOCKERFILES = {
    "rnnserve-server": "docker/server.Dockerfile",
    "rnnserve-trainer": "docker/trainer.Dockerfile",
}
# The model the `tiny` preset trains (training/src/rnnserve_train/config.py).
TINY_MODEL = "char-gru-tiny"
REPLICAS = ("server-a", "server-b", "server-c")

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module", autouse=True)
def only_when_asked(request: pytest.FixtureRequest) -> None:
    asked = "docker" in (request.config.option.markexpr or "")
    if not asked and os.environ.get("RNNSERVE_TEST_DOCKER") != "1":
        pytest.skip("needs a Docker engine and minutes: make test-docker")


def run(
    argv: list[str], env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; on failure, fail with its output."""
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done


def ensure_tools() -> None:
    """docker, docker-compose (v1) and debootstrap, installed from Debian's packages as root."""
    missing = [
        t for t in ("docker", "dockerd", "docker-compose", "debootstrap") if not shutil.which(t)
    ]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install docker.io docker-compose debootstrap"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env, timeout=300)
    run(
        ["apt-get", "install", "-y", "-q", "docker.io", "docker-compose", "debootstrap"],
        env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    """The environment for docker commands, with DOCKER_HOST of an engine that answers."""
    ensure_tools()
    env = dict(os.environ)
    status = run(["bash", "scripts/dockerd.sh", "status"], env, check=False)
    started = status.returncode != 0
    if started:
        status = run(["bash", "scripts/dockerd.sh", "start"], env, timeout=60)
    env["DOCKER_HOST"] = status.stdout.strip().removeprefix("export DOCKER_HOST=")
    try:
        yield env
    finally:
        if started:
            run(["bash", "scripts/dockerd.sh", "stop"], env, timeout=60, check=False)


def tag_build_stages(env: dict[str, str]) -> None:
    """Tag the build stages of the images just built (from the cache: seconds).

    The legacy builder, which docker-compose 1.29 uses, caches in untagged images. Tagged
    stages survive `prune_superseded_builds`, so the next run starts from them.
    """
    for image, dockerfile in DOCKERFILES.items():
        args = ["--build-arg", f"TORCH_WHEEL={env['TORCH_WHEEL']}"] if "trainer" in image else []
        for stage in ("deps", "wheels"):
            tag = f"{image}-build:{stage}"
            build = ["docker", "build", "--quiet", "--target", stage, "--tag", tag, *args]
            run([*build, "--file", dockerfile, "."], env, timeout=600)


def prune_superseded_builds(env: dict[str, str]) -> None:
    """Remove this project's untagged images: earlier builds' stages and images, whose
    dependency layers (a gigabyte with torch) would otherwise pile up in the data root."""
    titles = [*DOCKERFILES, "rnnserve-redis", "rnnserve-balancer"]
    labels = ["org.rnnserve.stage"] + [f"org.opencontainers.image.title={i}" for i in titles]
    for label in labels:
        run(["docker", "image", "prune", "--force", "--filter", f"label={label}"], env, check=False)


@dataclass
class Stack:
    env: dict[str, str]
    project: str
    port: int
    scaled: bool = False

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # Every profile named, so that `down` and `logs` see the `scale` services too.
        argv = ["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project]
        argv += ["--profile", "scale"] if self.scaled else []
        argv += args
        return run(argv, self.env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        """The id of the service's (only) container, running or exited."""
        found = run(
            [
                "docker", "ps", "--all", "--quiet",
                "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={service}",
            ],
            self.env,
        ).stdout.split()  # fmt: skip
        assert len(found) == 1, f"{service}: containers {found}"
        return found[0]

    def inspect(self, container: str, template: str) -> str:
        return run(["docker", "inspect", "--format", template, container], self.env).stdout.strip()

    def wait_healthy(self, service: str, timeout: float) -> None:
        container = self.container(service)
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.inspect(container, "{{.State.Status}} {{.State.Health.Status}}")
            if status == "running healthy":
                return
            if not status.startswith("running"):
                break
            time.sleep(1)
        logs = run(["docker", "logs", "--tail", "50", container], self.env, check=False)
        pytest.fail(f"{service} is {status!r}, not healthy\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module")
def stack(docker_env: dict[str, str]) -> Iterator[Stack]:
    """The compose stack, built and up with the tiny preset on a free 127.0.0.1 port."""
    started = time.monotonic()
    run(["bash", "scripts/offline-base-images.sh"], docker_env, timeout=600)
    wheel = run(["bash", "docker/fetch-torch-wheel.sh"], docker_env, timeout=600).stdout.strip()
    env = {
        **docker_env,
        "TORCH_WHEEL": wheel,
        "RNNSERVE_TRAIN_PRESET": "tiny",
        "RNNSERVE_PUBLISH_PORT": str(free_port()),
        "RNNSERVE_SCALE_PORT": str(free_port()),
        "RNNSERVE_HTTP_PUBLISH_PORT": str(free_port()),
    }
    stack = Stack(env, f"rnnserve-e2e-{uuid.uuid4().hex[:8]}", int(env["RNNSERVE_PUBLISH_PORT"]))
    try:
        stack.compose("build", timeout=900)
        tag_build_stages(env)
        print(f"images built in {time.monotonic() - started:.0f} s")
        # Returns once the trainer has exited 0 and the server has been started.
        stack.compose("up", "--detach", timeout=600)
        stack.wait_healthy("server", timeout=120)
        print(f"stack healthy {time.monotonic() - started:.0f} s after the start")
        yield stack
    except BaseException:
        logs = stack.compose("logs", "--no-color", "--tail", "80", check=False)
        print(logs.stdout, logs.stderr)
        raise
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", timeout=180, check=False)
        prune_superseded_builds(env)
        sizes = run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"], env, check=False
        )
        print("images:\n" + sizes.stdout)


def test_trainer_trained_once_and_exited_zero(stack: Stack) -> None:
    trainer = stack.container("trainer")
    assert stack.inspect(trainer, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    # A second run finds the model in the volume and trains nothing.
    again = stack.compose("run", "--rm", "-T", "trainer", timeout=120)
    assert "not training" in again.stdout, again.stdout


def test_server_runs_as_non_root_and_healthy(stack: Stack) -> None:
    server = stack.container("server")
    assert stack.inspect(server, "{{.Config.User}}") == "10001:10001"
    assert stack.inspect(server, "{{.State.Health.Status}}") == "healthy"


def test_host_client_generates_and_steps(stack: Stack) -> None:
    from rnnserve import Client

    with Client(f"127.0.0.1:{stack.port}", timeout=60) as client:
        names = [model.name for model in client.list_models()]
        assert TINY_MODEL in names
        with client.create_session(TINY_MODEL) as session:
            chunks = list(client.generate(session.id, "The ", max_tokens=24, temperature=0, seed=1))
            text = "".join(chunk.text for chunk in chunks)
            assert sum(len(chunk.tokens) for chunk in chunks) > 0 and text
            assert chunks[-1].finish_reason in ("length", "end-token", "stop-string")
            step = client.step(session.id, text="a")
            assert step.session_id == session.id and step.consumed >= 1
            assert step.top and all(0 <= t.probability <= 1 for t in step.top)
            assert step.top == sorted(step.top, key=lambda t: -t.probability)


def test_host_reaches_the_openai_http_front(stack: Stack) -> None:
    import json
    import urllib.request

    from rnnserve import Client

    url = f"http://127.0.0.1:{stack.env['RNNSERVE_HTTP_PUBLISH_PORT']}/v1"
    with urllib.request.urlopen(f"{url}/models", timeout=30) as reply:
        assert [m["id"] for m in json.loads(reply.read())["data"]] == [TINY_MODEL]
    body = {"model": TINY_MODEL, "prompt": "The ", "max_tokens": 12, "temperature": 0}
    request = urllib.request.Request(f"{url}/completions", json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as reply:
        text = json.loads(reply.read())["choices"][0]["text"]
    with (
        Client(f"127.0.0.1:{stack.port}", timeout=60) as client,
        client.create_session(TINY_MODEL) as session,
    ):
        assert text == client.generate_text(session.id, "The ", max_tokens=12, temperature=0)


def test_server_image_has_no_torch(stack: Stack) -> None:
    imported = run(
        ["docker", "run", "--rm", "--entrypoint", "python", SERVER_IMAGE, "-c", "import torch"],
        stack.env,
        check=False,
    )
    assert imported.returncode != 0 and "No module named 'torch'" in imported.stderr


def test_trainer_image_has_the_cpu_build_of_torch(stack: Stack) -> None:
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    shown = run(
        ["docker", "run", "--rm", "--entrypoint", "python", TRAINER_IMAGE, "-c", probe],
        stack.env,
    )
    assert shown.stdout.split() == ["2.13.0+cpu", "None"]


@pytest.fixture(scope="module")
def scaled(stack: Stack) -> Stack:
    """The same project with the `scale` profile added: Redis, three replicas, nginx."""
    stack.scaled = True
    stack.compose("build", "redis", "balancer", timeout=600)
    stack.compose("up", "--detach", timeout=600)
    for replica in REPLICAS:
        stack.wait_healthy(replica, timeout=120)
    from rnnserve import Client

    with Client(f"127.0.0.1:{stack.env['RNNSERVE_SCALE_PORT']}", timeout=10, retries=20) as c:
        assert c.health() == "SERVING"  # through the balancer, once nginx is up
    return stack


def streamed(client: Any, seeds: range, rounds: int, after_round: Any = None) -> list[Any]:
    """Seeded sessions that step and generate in rounds; ``after_round(n)`` between rounds."""
    sessions = [client.create_session(TINY_MODEL, seed=seed) for seed in seeds]
    seen: list[Any] = []
    for round_ in range(rounds):
        for session in sessions:
            result = client.step(session.id, text="ab"[round_ % 2])
            seen.append((result.steps, [t.id for t in result.top]))
            chunks = list(client.generate(session.id, max_tokens=5, temperature=0.9))
            seen.append([t.id for chunk in chunks for t in chunk.tokens])
        if after_round is not None:
            after_round(round_)
    for session in sessions:
        client.close_session(session.id)
    return seen


def test_scale_profile_streams_through_the_balancer_past_a_stopped_replica(
    scaled: Stack,
) -> None:
    from rnnserve import Client

    with Client(f"127.0.0.1:{scaled.port}", timeout=60) as single:
        control = streamed(single, range(4), rounds=6)

    def stop_a_replica(round_: int) -> None:
        if round_ == 2:  # SIGTERM, then SIGKILL if it is not gone within the grace period
            run(["docker", "stop", scaled.container("server-b")], scaled.env, timeout=60)

    address = f"127.0.0.1:{scaled.env['RNNSERVE_SCALE_PORT']}"
    with Client(address, timeout=60, retries=8) as balanced:
        assert streamed(balanced, range(4), rounds=6, after_round=stop_a_replica) == control
    states = {r: scaled.inspect(scaled.container(r), "{{.State.Status}}") for r in REPLICAS}
    assert states == {"server-a": "running", "server-b": "exited", "server-c": "running"}


def test_every_server_of_the_stack_signs_with_the_same_generated_key(scaled: Stack) -> None:
    """The one-shot `state-keys` wrote one key for all: the single server's export
    imports through the balancer, and the key file was written once, for the server's user."""
    from rnnserve import Client

    address = f"127.0.0.1:{scaled.env['RNNSERVE_SCALE_PORT']}"
    with Client(f"127.0.0.1:{scaled.port}", timeout=60) as single, Client(address) as balanced:
        with single.create_session(TINY_MODEL) as session:
            session.step(text="abc")
            exported = session.export()
        with balanced.create_session(TINY_MODEL, state=exported) as imported:
            assert imported.step(text="d").steps == 4
    keys = scaled.container("state-keys")
    assert scaled.inspect(keys, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    listed = run(
        ["docker", "run", "--rm", "-v", f"{scaled.project}_state-keys:/keys", "--entrypoint",
         "stat", SERVER_IMAGE, "-c", "%u %a %s", "/keys/state.keys"],
        scaled.env,
    ).stdout.split()  # fmt: skip
    assert listed == ["10001", "400", "65"]  # 64 hex digits and a newline
