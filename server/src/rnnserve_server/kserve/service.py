"""The ``inference.GRPCInferenceService`` servicer: KServe v2 / Triton clients
(``tritonclient.grpc`` among them) on the same server, port, authentication, limits,
metrics, batching and session store as ``rnnserve.v1``.

Each ModelInfer request is one step of one sequence (``sequences``): its tokens are fed
to the sequence's session through the engine's stepping, exactly as a rnnserve.v1 Step
feeds them, so both APIs give the same outputs for the same inputs. ModelStreamInfer
answers its requests in order, one response each; a request that fails is answered with
the stream's ``error_message`` and the stream goes on, as Triton does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

import grpc

from rnnserve_server import calls
from rnnserve_server.engine import Engine
from rnnserve_server.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError
from rnnserve_server.kserve import requests
from rnnserve_server.kserve.models import config, resolve, versions
from rnnserve_server.kserve.models import metadata as model_metadata
from rnnserve_server.kserve.pb import grpc_service_pb2 as pb
from rnnserve_server.kserve.sequences import Sequences
from rnnserve_server.metrics import Metrics
from rnnserve_server.rpc import Accounted, caller_of, generic_handler, guarded, parsed

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
SERVER_NAME = "rnnserve"
# The protocol extensions rnnserve serves (Triton's names).
EXTENSIONS = (
    "classification",
    "sequence",
    "model_configuration",
    "model_repository",
    "parameters",
)


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


def add_to_server(servicer: KServeServicer, server: grpc.aio.Server) -> None:
    """Register every method of the service with lenient request decoding."""
    server.add_generic_rpc_handlers((generic_handler(servicer, SERVICE, pb),))


def _unsupported(method: str, why: str) -> Callable[..., Any]:
    async def handler(self: KServeServicer, request: Any, context: Any) -> Any:
        raise Unimplemented(f"{method} is not supported by rnnserve: {why}")

    handler.__name__ = method
    return guarded(handler)


def _check_repository_call(
    request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest,
    *,
    accepted: tuple[str, ...],
) -> None:
    """INVALID_ARGUMENT for what rnnserve's one repository, read as it is on disk, cannot
    do: another repository, a configuration or files sent with the call."""
    if request.repository_name:
        raise InvalidArgument(
            f"repository_name = {request.repository_name!r}: rnnserve serves one model "
            "repository (the setting models); leave it empty"
        )
    for name in sorted(request.parameters):
        if name not in accepted:
            raise InvalidArgument(
                f"parameter {name!r} is not supported: rnnserve loads a model as its folder "
                "in the repository holds it (its versions and config.toml)"
            )


class KServeServicer(Accounted):
    SERVICE = SERVICE_NAME

    def __init__(self, engine: Engine, metrics: Metrics | None = None) -> None:
        super().__init__(engine, metrics)
        self.sequences = Sequences(engine.sessions)

    # ------------------------------------------------------------------ server and models

    @guarded
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @guarded
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        # As the health service: ready while at least one model is loaded.
        return pb.ServerReadyResponse(ready=bool(self.engine.repository.models))

    @guarded
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=metadata.version("rnnserve-server"), extensions=EXTENSIONS
        )

    @guarded
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        try:
            resolve(self.engine.repository, request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @guarded
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        repository = self.engine.repository
        model = resolve(repository, request.name, request.version)
        return model_metadata(model, versions(repository, model.name))

    @guarded
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        model = resolve(self.engine.repository, request.name, request.version)
        return pb.ModelConfigResponse(config=config(model, self.engine.config))

    @guarded
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        repository = self.engine.repository
        index = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=m.name, version=str(m.version), state="READY"
            )
            for m in repository.list()
        ]
        if not request.ready:  # what is not served, and why (Triton's reason "unloaded")
            index += [
                pb.RepositoryIndexResponse.ModelIndex(
                    name=name, version=str(version), state="UNAVAILABLE", reason="unloaded"
                )
                for name, version in repository.unloaded()
            ]
            index += [
                pb.RepositoryIndexResponse.ModelIndex(
                    name=path.parent.name, version=path.name, state="UNAVAILABLE", reason=reason
                )
                for path, reason in sorted(repository.broken.items())
            ]
        return pb.RepositoryIndexResponse(models=index)

    @guarded
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> Any:
        """rnnserve.v1 LoadModel: the model's folder rescanned (admin, as LoadModel)."""
        _check_repository_call(request, accepted=())
        result = await self.engine.load_model(request.model_name)
        if not any(m.name == request.model_name for m in self.engine.repository.list()):
            reasons = "; ".join(f"{path}: {why}" for path, why in sorted(result.refused.items()))
            raise FailedPrecondition(
                f"failed to load '{request.model_name}': no version of it is served"
                + (f" ({reasons})" if reasons else " (no version folder its policy serves)")
            )
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> Any:
        """rnnserve.v1 UnloadModel of every version: open sequences go on until they end."""
        # no ensembles, so nothing depends on a model: unload_dependents changes nothing
        _check_repository_call(request, accepted=("unload_dependents",))
        await self.engine.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ inference

    async def _infer(self, request: pb.ModelInferRequest, owner: str) -> pb.ModelInferResponse:
        calls.bind(request_id=request.id)  # the logs' and traces' request id
        model = resolve(self.engine.repository, request.model_name, request.model_version)
        call = requests.read(model, request, limits=self.engine.core.input_limits)
        session = await self.sequences.begin(
            model,
            owner,
            call.sequence,
            start=call.start,
            source=call.source,
            condition=call.condition,
        )
        calls.bind(session=session.id)
        try:
            out = await self.engine.steps.step(
                session, call.tokens, k=call.k, full=call.full, with_logits=call.with_logits
            )
        except (Exception, asyncio.CancelledError):
            if call.start:  # a sequence whose first request failed has not started
                await self.sequences.end(session)
            raise
        if call.end:
            await self.sequences.end(session)
        return requests.answer(model, request, call, out)

    @guarded
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        return await self._infer(request, caller_of(context))

    @guarded
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        owner = caller_of(context)  # one caller for the whole stream
        async for request in request_iterator:
            try:
                response = await self._infer(parsed(request), owner)
            except ServiceError as exc:
                log.info("ModelStreamInfer request -> %s: %s", exc.code.name, exc.message)
                yield pb.ModelStreamInferResponse(error_message=exc.message)
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)

    # ------------------------------------------------------------------ not offered

    ModelStatistics = _unsupported(
        "ModelStatistics", "the server's Prometheus metrics count calls (metrics_port)"
    )
    SystemSharedMemoryStatus = _unsupported("SystemSharedMemoryStatus", "no shared memory")
    SystemSharedMemoryRegister = _unsupported("SystemSharedMemoryRegister", "no shared memory")
    SystemSharedMemoryUnregister = _unsupported("SystemSharedMemoryUnregister", "no shared memory")
    CudaSharedMemoryStatus = _unsupported("CudaSharedMemoryStatus", "no shared memory")
    CudaSharedMemoryRegister = _unsupported("CudaSharedMemoryRegister", "no shared memory")
    CudaSharedMemoryUnregister = _unsupported("CudaSharedMemoryUnregister", "no shared memory")
    TraceSetting = _unsupported("TraceSetting", "no tracing")
    LogSettings = _unsupported("LogSettings", "logging is set at start (log_level, log_json)")
