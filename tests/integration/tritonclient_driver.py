"""tritonclient[grpc], unmodified from PyPI, driven by the KServe tests.

This file runs in tritonclient's own virtual environment (`make tritonclient`), never in
rnnserve's: tritonclient pins protobuf<7 while rnnserve uses protobuf 7. It imports
nothing of rnnserve. It reads a plan (JSON) on stdin and prints what tritonclient
returned (JSON) on stdout:

    {"address": "127.0.0.1:PORT", "headers": {...},
     "calls": [{"call": "infer", "request": REQUEST},
               {"call": "stream", "requests": [REQUEST, ...]},
               {"call": "server_live" | "server_ready" | "server_metadata"},
               {"call": "model_ready" | "model_metadata" | "model_config", "model": NAME},
               {"call": "load_model" | "unload_model", "model": NAME, "config": JSON},
               {"call": "repository_index"}]}

    REQUEST: {"model": NAME, "version": "", "id": "", "sequence_id": 7 or "s", "start": bool,
              "end": bool, "ids": [int] or "text": str, "outputs": [NAME, ...],
              "classes": {OUTPUT: k}, "parameters": {...}}

Each infer answer is {"outputs": {NAME: [values]}, "model_version", "id"} (BYTES as
text) or {"error": {"status": "StatusCode.X", "message": ...}}.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def inputs_of(request: dict[str, Any]) -> list[Any]:
    if "ids" in request:
        tensor = grpcclient.InferInput("INPUT_IDS", [len(request["ids"])], "INT64")
        tensor.set_data_from_numpy(np.array(request["ids"], dtype=np.int64))
    else:
        tensor = grpcclient.InferInput("TEXT", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([request["text"].encode()], dtype=np.object_))
    return [tensor]


def arguments(request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    classes = request.get("classes", {})
    names = request.get("outputs")
    return {
        "model_name": request["model"],
        "inputs": inputs_of(request),
        "model_version": request.get("version", ""),
        "request_id": request.get("id", ""),
        "outputs": None
        if names is None
        else [grpcclient.InferRequestedOutput(n, class_count=classes.get(n, 0)) for n in names],
        "sequence_id": request.get("sequence_id", 0),
        "sequence_start": request.get("start", False),
        "sequence_end": request.get("end", False),
        "parameters": request.get("parameters"),
        "headers": headers,
    }


def answer(result: Any) -> dict[str, Any]:
    response = result.get_response()
    outputs = {}
    for output in response.outputs:
        values = result.as_numpy(output.name)
        outputs[output.name] = [
            v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1).tolist()
        ]
    return {"outputs": outputs, "model_version": response.model_version, "id": response.id}


def failure(error: InferenceServerException) -> dict[str, Any]:
    return {"error": {"status": error.status(), "message": error.message()}}


def stream(client: Any, requests: list[dict[str, Any]], headers: dict[str, str]) -> list[Any]:
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put(failure(error) if error else answer(result)),
        headers=headers,
    )
    try:
        for request in requests:
            call = arguments(request, headers)
            del call["headers"]  # the stream's headers were sent when it started
            client.async_stream_infer(**call)
        return [answers.get(timeout=60) for _ in requests]
    finally:
        client.stop_stream()


def run(client: Any, call: dict[str, Any], headers: dict[str, str]) -> Any:
    kind = call["call"]
    try:
        if kind == "infer":
            return answer(client.infer(**arguments(call["request"], headers)))
        if kind == "stream":
            return stream(client, call["requests"], headers)
        if kind in ("server_live", "server_ready"):
            return getattr(client, f"is_{kind}")(headers=headers)
        if kind == "server_metadata":
            return client.get_server_metadata(headers=headers, as_json=True)
        if kind == "load_model":
            client.load_model(call["model"], headers=headers, config=call.get("config"))
            return "done"
        if kind == "unload_model":
            client.unload_model(call["model"], headers=headers)
            return "done"
        if kind == "repository_index":
            return client.get_model_repository_index(headers=headers, as_json=True)
        if kind == "model_ready":
            return client.is_model_ready(call["model"], call.get("version", ""), headers=headers)
        getter = {
            "model_metadata": client.get_model_metadata,
            "model_config": client.get_model_config,
        }
        return getter[kind](call["model"], call.get("version", ""), headers=headers, as_json=True)
    except InferenceServerException as error:
        return failure(error)


def main() -> None:
    plan = json.load(sys.stdin)
    headers = plan.get("headers", {})
    with grpcclient.InferenceServerClient(plan["address"]) as client:
        results = [run(client, call, headers) for call in plan["calls"]]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
