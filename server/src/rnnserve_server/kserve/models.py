"""What a model package looks like to a KServe v2 / Triton client: its input and output
tensors, its metadata and its configuration, all derived from the manifest.

Every model is stateful, so every model is a Triton *sequence* model with implicit
state: the server keeps each sequence's hidden state between its requests (the
``sequence_batching.state`` of its configuration), and a request carries only the tokens
to feed. Requests have no batch dimension (``max_batch_size`` 0): one request is one
step of one sequence; the server batches the steps of many sequences itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rnnserve_server import calls
from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import InvalidArgument, NotFound, ServiceError
from rnnserve_server.kserve.pb import grpc_service_pb2 as pb
from rnnserve_server.kserve.pb import model_config_pb2 as mc
from rnnserve_server.manifest import GRAPH_SIGNATURES
from rnnserve_server.modelconfig import VersionPolicy
from rnnserve_server.repository import Model, Repository

PLATFORM = "rnnserve"

# Inputs: the tokens of a step, as ids or as text (exactly one per request); and on the
# request that starts a sequence, what the model's first state is made from.
INPUT_IDS, TEXT = "INPUT_IDS", "TEXT"
SOURCE_IDS, SOURCE_TEXT, CONDITION = "SOURCE_IDS", "SOURCE_TEXT", "CONDITION"
# Outputs, after the request's last token: the output row, its distribution, its top k.
LOGITS, PROBABILITIES = "LOGITS", "PROBABILITIES"
TOP_K_IDS, TOP_K_PROBABILITIES, TOP_K_TEXTS = "TOP_K_IDS", "TOP_K_PROBABILITIES", "TOP_K_TEXTS"
STEPS = "STEPS"

CONFIG_TYPES = {"INT64": mc.TYPE_INT64, "FP32": mc.TYPE_FP32, "BYTES": mc.TYPE_STRING}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # the protocol's: INT64, FP32, BYTES
    shape: tuple[int, ...]  # -1: any length


def inputs(model: Model) -> list[TensorSpec]:
    specs = [TensorSpec(INPUT_IDS, "INT64", (-1,)), TensorSpec(TEXT, "BYTES", (1,))]
    kind = model.package.manifest.initial_state.kind
    if kind == "encoder":
        specs += [TensorSpec(SOURCE_IDS, "INT64", (-1,)), TensorSpec(SOURCE_TEXT, "BYTES", (1,))]
    elif kind == "condition":
        specs.append(TensorSpec(CONDITION, "BYTES", (1,)))
    return specs


def outputs(model: Model) -> list[TensorSpec]:
    width = model.package.manifest.output_size
    return [
        TensorSpec(LOGITS, "FP32", (width,)),
        TensorSpec(PROBABILITIES, "FP32", (width,)),
        TensorSpec(TOP_K_IDS, "INT64", (-1,)),
        TensorSpec(TOP_K_PROBABILITIES, "FP32", (-1,)),
        TensorSpec(TOP_K_TEXTS, "BYTES", (-1,)),
        TensorSpec(STEPS, "INT64", (1,)),
    ]


def resolve(repository: Repository, name: str, version: str) -> Model:
    """The model a request names: version "" is its default version; NOT_FOUND in
    Triton's words for an unknown model or version."""
    number = 0
    if version:
        try:
            number = int(version)
        except ValueError:
            number = -1
        if number <= 0:
            raise InvalidArgument(
                f"failed to get model version from specified version string '{version}', "
                "version should be an integral value > 0"
            )
    try:
        model = repository.get(name, number)
    except ServiceError:
        which = f"'{name}'" + (f" version {version}" if version else "")
        raise NotFound(f"Request for unknown model: {which} is not found") from None
    calls.bind(model=model)  # the call's model label (metrics, logs, traces)
    return model


def versions(repository: Repository, name: str) -> list[str]:
    return [str(m.version) for m in repository.list() if m.name == name]


def metadata(model: Model, loaded_versions: list[str]) -> pb.ModelMetadataResponse:
    def described(specs: list[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=s.name, datatype=s.datatype, shape=list(s.shape)
            )
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=model.name,
        versions=loaded_versions,
        platform=PLATFORM,
        inputs=described(inputs(model)),
        outputs=described(outputs(model)),
    )


def version_policy(policy: VersionPolicy) -> mc.ModelVersionPolicy:
    """The model's config.toml version policy in Triton's terms."""
    if policy.policy == "latest":
        return mc.ModelVersionPolicy(
            latest=mc.ModelVersionPolicy.Latest(num_versions=policy.latest)
        )
    if policy.policy == "specific":
        return mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=list(policy.specific))
        )
    return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())


def config(model: Model, server: ServerConfig) -> mc.ModelConfig:
    """The model's configuration: its manifest, and its config.toml's settings where it
    has them, else the server's."""
    own = model.config
    max_batch, window_us = own.batching(server)
    manifest = model.package.manifest
    tokenizer = model.package.tokenizer
    state_in, state_out = GRAPH_SIGNATURES["step"][0][1], GRAPH_SIGNATURES["step"][1][1]
    state_dims = list(manifest.state_shape)  # every part's rows (an LSTM's h then c)
    initial = manifest.initial_state
    state = mc.ModelSequenceBatching.State(
        input_name=state_in,
        output_name=state_out,
        data_type=mc.TYPE_FP32,
        dims=state_dims,
        # Only a zero start is data Triton can describe; the other starts are named in
        # the parameter initial_state.
        initial_state=(
            [
                mc.ModelSequenceBatching.InitialState(
                    name="zeros", data_type=mc.TYPE_FP32, dims=state_dims, zero_data=True
                )
            ]
            if initial.kind == "zeros"
            else []
        ),
    )
    parameters = {
        "description": manifest.description,
        "shape": manifest.shape,
        "cell": manifest.cell,
        "layers": str(manifest.layers),
        "hidden_size": str(manifest.hidden_size),
        **(
            {"vocabulary_kind": tokenizer.kind, "vocabulary_size": str(tokenizer.size)}
            if tokenizer is not None
            else {"input_kind": "vectors", "input_size": str(manifest.input.size)}
        ),
        "output_kind": manifest.output.kind,
        "initial_state": initial.kind + (f":{initial.token}" if initial.token else ""),
        "max_batch": str(max_batch),
    }
    if own.versions.default:
        parameters["default_version"] = str(own.versions.default)
    if own.path is not None:
        parameters["config_file"] = str(own.path)
    if manifest.output.labels:
        parameters["labels"] = json.dumps(list(manifest.output.labels), ensure_ascii=False)
    if manifest.conditions:
        parameters["conditions"] = json.dumps(list(manifest.conditions), ensure_ascii=False)
    return mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=PLATFORM,
        max_batch_size=0,
        input=[
            mc.ModelInput(
                name=s.name, data_type=CONFIG_TYPES[s.datatype], dims=list(s.shape), optional=True
            )
            for s in inputs(model)
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=CONFIG_TYPES[s.datatype], dims=list(s.shape))
            for s in outputs(model)
        ],
        version_policy=version_policy(own.versions),
        sequence_batching=mc.ModelSequenceBatching(
            oldest=mc.ModelSequenceBatching.StrategyOldest(
                max_candidate_sequences=min(
                    own.max_sessions or server.max_sessions, server.max_sessions
                ),
                max_queue_delay_microseconds=window_us,
            ),
            max_sequence_idle_microseconds=(own.idle_timeout_s or server.session_idle_timeout_s)
            * 1_000_000,
            state=[state],
        ),
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=False),
        parameters={k: mc.ModelParameter(string_value=v) for k, v in parameters.items()},
    )
