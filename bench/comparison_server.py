"""What the two comparison servers (echo and baseline) share: the process around a
``rnnserve.v1.RnnServe`` servicer, and the pieces of a StepResponse.

A server process binds 127.0.0.1 on a free port, prints ``listening on 127.0.0.1:PORT``
to stdout once it accepts calls (the harness waits for that line) and stops on SIGTERM
or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
from collections.abc import Callable, Sequence

import grpc.aio

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

READY_PREFIX = "listening on "
DEFAULT_TOP_K = 5


def new_session_id() -> str:
    """32 hex digits, like rnnserve's."""
    return secrets.token_hex(16)


def top_entries(
    ranked: Sequence[tuple[int, float]], vocabulary: Sequence[str]
) -> list[pb.TokenProbability]:
    return [pb.TokenProbability(id=i, text=vocabulary[i], probability=p) for i, p in ranked]


def requested_top_k(request: pb.StepRequest) -> int:
    return request.top_k if request.HasField("top_k") else DEFAULT_TOP_K


def finish_reason(produced: int, max_tokens: int) -> pb.FinishReason:
    """LENGTH on the last message of a generation, UNSPECIFIED before."""
    return pb.FINISH_REASON_LENGTH if produced == max_tokens else pb.FINISH_REASON_UNSPECIFIED


def token_ids(request: pb.StepRequest) -> list[int]:
    """The request's token ids; text is accepted as one token per character code."""
    if request.WhichOneof("input") == "text":
        return [ord(c) % 100 for c in request.text]
    return list(request.tokens.ids)


async def _serve(servicer: rnnserve_pb2_grpc.RnnServeServicer, host: str, port: int) -> None:
    server = grpc.aio.server()
    rnnserve_pb2_grpc.add_RnnServeServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{READY_PREFIX}{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main(
    description: str,
    make_servicer: Callable[[argparse.Namespace], rnnserve_pb2_grpc.RnnServeServicer],
    argv: Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    servicer = make_servicer(args)
    try:
        asyncio.run(_serve(servicer, args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(130)
