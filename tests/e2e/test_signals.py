"""What a server tells its callers and its balancer as it goes away, in real processes:
health NOT_SERVING through the whole shutdown grace period while calls are still served
(on every front), UNAVAILABLE for calls cut off (directly, and through nginx when a
replica dies; an HTTP stream's error event), and no unretrieved-task tracebacks in a
storm of cancelled generations with Redis."""

from __future__ import annotations

import http.client
import json
import signal
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import SHARED_STATE_KEYS, Nginx, RedisServer, ServerProcess, started

from rnnserve import Client, StepInput, Unavailable
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from rnnserve_server.kserve.pb import grpc_service_pb2 as kpb
from rnnserve_server.kserve.pb import grpc_service_pb2_grpc as kpb_grpc

GRACE_S = 3.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# A greedy generation that outlasts a 1 s grace period: the generation graph makes ~20,000
# tokens a second here, so the 4,096 a server allows by default could end within it.
LONG_TOKENS = 200_000
LONG_GENERATIONS = (  # a caller's token burst must hold a whole call
    "--max-generate-tokens",
    str(LONG_TOKENS),
    "--caller-token-burst",
    str(2 * LONG_TOKENS),
)


@pytest.fixture
def replica(models_dir: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        "--models", str(models_dir), "--shutdown-grace-s", str(GRACE_S), *LONG_GENERATIONS
    )
    try:
        yield server
    finally:
        end(server)


def end(server: ServerProcess) -> None:
    """Kill it if it still runs; either way, its log read to the end and its pipe closed."""
    if server.process.poll() is None:
        server.kill()
    else:
        server.stop()


def held_stream(client: Client, session_id: str) -> tuple[threading.Thread, list[Any]]:
    """A StepStream answered once, then held open by its caller; its outcome lands in
    the returned list (the results, then the error that ended it, if any)."""
    outcome: list[Any] = []
    answered = threading.Event()

    def run() -> None:
        def inputs() -> Iterator[StepInput]:
            yield StepInput(session_id, [5])
            time.sleep(60)

        try:
            for result in client.step_stream(inputs()):
                outcome.append(result)
                answered.set()
        except Exception as error:  # the outcome under test
            outcome.append(error)
            answered.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert answered.wait(30)
    return thread, outcome


def test_health_is_not_serving_for_the_whole_grace_period(
    replica: ServerProcess, model_name: str
) -> None:
    with (
        Client(replica.address, timeout=10, retries=0) as client,
        grpc.insecure_channel(replica.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        session = client.create_session(model_name)
        thread, outcome = held_stream(client, session.id)
        began = time.monotonic()
        replica.process.send_signal(signal.SIGTERM)
        statuses = []
        last_answer = began
        served_meanwhile = False
        while replica.process.poll() is None:
            try:
                statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
            except grpc.RpcError:
                break  # the very end: the server has stopped serving
            last_answer = time.monotonic()
            if not served_meanwhile and time.monotonic() - began > 1.0:
                with client.create_session(model_name) as late:  # new calls still served
                    served_meanwhile = late.step(tokens=[4, 5]).steps == 2
            time.sleep(0.05)
        assert replica.process.wait(30) == 0
        elapsed = time.monotonic() - began
    assert elapsed >= GRACE_S
    assert statuses and set(statuses) == {NOT_SERVING}  # observable, all along
    assert last_answer - began >= GRACE_S - 0.5  # answered to the end of the grace period
    assert served_meanwhile
    thread.join(10)
    error = outcome[-1]
    assert isinstance(error, Unavailable), outcome  # cut off at the end: UNAVAILABLE, not OK
    assert "shutting down" in error.details


def test_every_front_is_served_through_the_grace_period_then_says_why_it_ends(
    models_dir: Path, model_name: str
) -> None:
    """The KServe v2 and OpenAI HTTP fronts drain as rnnserve.v1 does: served for the
    whole grace period, then a KServe stream still open ends UNAVAILABLE and an HTTP
    stream still running ends with an error event (503's), not a cut connection."""
    tokens = 100_000  # greedy, so no end token by chance: a stream that runs past the grace
    server = ServerProcess(
        "--models", str(models_dir), "--shutdown-grace-s", str(GRACE_S), "--openai-port", "0",
        "--max-generate-tokens", str(tokens), "--caller-tokens-per-s", "0",
    )  # fmt: skip
    try:
        with grpc.insecure_channel(server.address) as channel:
            kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
            release = threading.Event()

            def held() -> Iterator[kpb.ModelInferRequest]:
                yield infer_request(model_name, 1, start=True)
                release.wait(60)

            kserve_stream = kserve.ModelStreamInfer(held(), timeout=60)
            assert not next(kserve_stream).error_message
            completion = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
            body = {"model": model_name, "prompt": "a", "max_tokens": tokens, "temperature": 0}
            completion.request("POST", "/v1/completions", json.dumps({**body, "stream": True}))
            events = completion.getresponse()
            assert events.status == 200
            events.readline()
            began = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            served = []
            while time.monotonic() - began < GRACE_S + 1.5:  # read slowly past the grace
                line = events.readline()
                if not line:
                    break
                if time.monotonic() - began > 1.0 and len(served) < 2:  # new calls still served
                    late = infer_request(model_name, 2, start=True)
                    served.append(bool(kserve.ModelInfer(late, timeout=10).outputs))
                    whole = http_json(server.http_port, {**body, "max_tokens": 3})
                    served.append(whole["choices"][0]["finish_reason"] == "length")
                time.sleep(0.01)
            rest = events.read().decode().split("\n")  # the last events, read at once
            completion.close()
            with pytest.raises(grpc.RpcError) as ended:
                next(kserve_stream)
            release.set()
        assert server.process.wait(30) == 0
    finally:
        end(server)
    assert served == [True, True]
    data = [line.removeprefix("data: ") for line in rest if line.startswith("data: ")]
    error = json.loads(data[-1])["error"]
    assert error["type"] == "server_error" and "shutting down" in error["message"]
    assert "[DONE]" not in data
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (ended.value.details() or "")


def infer_request(model: str, sequence: int, *, start: bool = False) -> kpb.ModelInferRequest:
    """One KServe step of token 5 in sequence ``sequence``."""
    message = kpb.ModelInferRequest(model_name=model)
    message.parameters["sequence_id"].uint64_param = sequence
    message.parameters["sequence_start"].bool_param = start
    message.inputs.add(name="INPUT_IDS", datatype="INT64", shape=[1])
    message.raw_input_contents.append(struct.pack("<q", 5))
    return message


def http_json(port: int, body: dict[str, Any]) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body))
        reply = connection.getresponse()
        assert reply.status == 200
        return json.loads(reply.read())
    finally:
        connection.close()


def test_a_second_signal_stops_at_once(models_dir: Path, model_name: str) -> None:
    server = ServerProcess("--models", str(models_dir), "--shutdown-grace-s", "60")
    try:
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(20) == 0  # well before the 60 s of grace
        assert time.monotonic() - began < 20
    finally:
        end(server)


@pytest.fixture
def balanced(models_dir: Path, tmp_path: Path) -> Iterator[tuple[Nginx, ServerProcess]]:
    """One replica behind nginx (as docker/balancer/nginx.conf)."""
    server = ServerProcess(
        "--models", str(models_dir), "--shutdown-grace-s", "1", *LONG_GENERATIONS
    )
    try:
        with started(Nginx(tmp_path, [server.address])) as balancer:
            yield balancer, server
    finally:
        end(server)


def generation_cut_off(address: str, model: str, cut: Any) -> grpc.RpcError:
    """A raw client's greedy (never ending early) Generate, ``cut()`` after its first
    message; the error the stream ends with."""
    with grpc.insecure_channel(address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        session = stub.CreateSession(pb.CreateSessionRequest(model=model)).session_id
        request = pb.GenerateRequest(session_id=session, max_tokens=LONG_TOKENS, temperature=0.0)
        stream = stub.Generate(request, timeout=60)
        next(stream)
        cut()
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        return ended.value


def test_a_replica_killed_mid_stream_behind_nginx_is_unavailable_to_the_client(
    balanced: tuple[Nginx, ServerProcess], model_name: str
) -> None:
    balancer, server = balanced
    error = generation_cut_off(balancer.address, model_name, server.kill)
    # What gRPC makes of nginx resetting the stream (HTTP/2 INTERNAL_ERROR) ...
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "RST_STREAM" in (error.details() or "")
    # ... which the client library raises as what it is
    from rnnserve.errors import from_rpc_error

    assert isinstance(from_rpc_error(error), Unavailable)


def test_a_replica_killed_mid_stream_is_unavailable(
    replica: ServerProcess, model_name: str
) -> None:
    error = generation_cut_off(replica.address, model_name, replica.kill)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_replica_stopping_mid_stream_behind_nginx_says_so(
    balanced: tuple[Nginx, ServerProcess], model_name: str
) -> None:
    balancer, server = balanced
    error = generation_cut_off(
        balancer.address, model_name, lambda: server.process.send_signal(signal.SIGTERM)
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the server's own status, through nginx
    assert "shutting down" in (error.details() or "")
    assert server.process.wait(30) == 0


def test_cancelled_generations_whose_save_meets_aborted_leave_no_traceback(
    models_dir: Path, tmp_path: Path, model_name: str
) -> None:
    """Each session generates on one replica while a step through the other moves its
    record on; the generation is then cancelled, so its cleanup save meets ABORTED
    after its caller has gone: logged as that, not as an unretrieved task's traceback."""
    with started(RedisServer(tmp_path / "redis")) as redis:
        env = {
            "RNNSERVE_SESSION_STORE": redis.url,
            "RNNSERVE_STATE_KEYS": SHARED_STATE_KEYS,
            "RNNSERVE_SHUTDOWN_GRACE_S": "0",
        }
        one, two = (ServerProcess("--models", str(models_dir), env=env) for _ in range(2))
        try:
            with (
                grpc.insecure_channel(one.address) as first,
                grpc.insecure_channel(two.address) as second,
            ):
                generating = rnnserve_pb2_grpc.RnnServeStub(first)
                stepping = rnnserve_pb2_grpc.RnnServeStub(second)

                def storm(_: int) -> None:
                    created = generating.CreateSession(pb.CreateSessionRequest(model=model_name))
                    request = pb.GenerateRequest(
                        session_id=created.session_id, max_tokens=300, temperature=0.0
                    )
                    stream = generating.Generate(request, timeout=60)
                    next(stream)
                    stepping.Step(pb.StepRequest(session_id=created.session_id, text="x"))
                    stream.cancel()

                threads = [threading.Thread(target=storm, args=(i,)) for i in range(30)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
                time.sleep(1.0)  # the cut-off generations close and save
        finally:
            for server in (one, two):
                server.stop()
    log = "".join(one.lines)
    assert "after its caller went away" in log  # the storm did reach the cleanup save
    assert "never retrieved" not in log
    assert "Traceback" not in log
