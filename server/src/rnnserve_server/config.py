"""Server configuration: defaults, then a TOML file, then ``RNNSERVE_*`` variables, then
flags; each later source overrides the earlier ones.

Every field of ServerConfig is one setting: ``max_sessions`` is the key ``max_sessions``
of the file that ``--config FILE`` (or ``RNNSERVE_CONFIG``) names, the variable
``RNNSERVE_MAX_SESSIONS`` and the flag ``--max-sessions``. The effective configuration is
validated once and logged once at start, secrets redacted (``setting(..., secret=True)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from rnnserve_server.redaction import redacted, without_password
from rnnserve_server.tomlfile import check_keys, read_table, typed

ENV_PREFIX = "RNNSERVE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
PROVIDERS = ("cpu", "cuda")
MIN_STATE_KEY_LENGTH = 32
MAX_STATE_KEYS = 16


def setting(default: Any, help_text: str, *, secret: bool | Callable[[str], str] = False) -> Any:
    """A configuration field with its --help text.

    A ``secret`` one is never shown as it is (the configuration log line, error
    messages): ``True`` shows ``***`` when set, a function shows what it returns (e.g. a
    URL without its password).
    """
    return field(default=default, metadata={"help": help_text, "secret": secret})


def shown_value(setting_field: Field[Any], value: Any) -> Any:
    """A setting's value as logs and messages may show it."""
    secret = setting_field.metadata.get("secret", False)
    if callable(secret):
        return secret(value)
    if secret:
        return redacted(value)
    return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class ServerConfig:
    models: Path = setting(Path("models"), "model repository: <models>/<name>/<version>/")
    host: str = setting("127.0.0.1", "address to listen on; 0.0.0.0 or [::] for all interfaces")
    port: int = setting(50051, "port to listen on; 0 picks a free one")
    provider: str = setting("cpu", "onnxruntime execution provider: cpu or cuda")
    allow_cpu_fallback: bool = setting(
        False, "with provider=cuda where CUDA is unavailable: warn and use the CPU, not fail"
    )
    cuda_device_id: int = setting(0, "GPU the CUDA provider uses")
    intra_op_threads: int = setting(
        1, "threads onnxruntime uses in one run (batching gives the parallelism); 0: its default"
    )
    sequence_intra_op_threads: int = setting(
        0,
        "threads onnxruntime uses in one run of a sequence or encoder graph (a whole prompt "
        "or source: one long run, which no batching parallelizes); 0: one per core",
    )
    intra_op_spinning: bool = setting(
        False, "let idle onnxruntime threads spin for work (only with cores to spare)"
    )
    workers: int = setting(
        2,
        "threads that run inference beside the event loop: as many for whole inputs "
        "(prompts, sources) and as many again for the batcher's runs of the step graph",
    )
    max_batch: int = setting(256, "most sessions' steps one run of the step graph takes")
    batch_window_us: int = setting(
        0, "microseconds to wait for more steps before a run; 0: batch what is queued"
    )
    inline_run_us: int = setting(
        1000,
        "a run expected to take at most this many microseconds (the model's measured time "
        "per row times the rows) runs on the event loop, a longer one on a worker thread; "
        "0: every run on a worker thread",
    )
    max_sessions: int = setting(100_000, "open sessions allowed; more: RESOURCE_EXHAUSTED")
    max_sessions_per_caller: int = setting(
        10_000, "open sessions one caller may hold (the authenticated caller, else its IP)"
    )
    max_calls_per_caller: int = setting(
        1024,
        "calls one caller may have in flight at once on this replica (streams count while open)",
    )
    caller_tokens_per_s: float = setting(
        20_000.0,
        "tokens per second one caller may feed and generate on this replica, on average "
        "(a token bucket); 0: no limit",
    )
    caller_token_burst: int = setting(
        40_000,
        "tokens one caller may use at once before caller_tokens_per_s paces it (the bucket's "
        "size; at least the largest request: max_tokens_per_message, and a Generate's "
        "max_tokens_per_request + max_generate_tokens)",
    )
    max_steps_per_message: int = setting(4096, "steps one StepMany message may carry")
    max_tokens_per_message: int = setting(
        16_384,
        "inputs one StepMany message may carry in all: tokens, a text counted as its code "
        "points, vectors one each (checked before anything is tokenized or run)",
    )
    repository_poll_s: float = setting(
        0.0, "seconds between rescans of the model repository; 0: only on ReloadModels"
    )
    metrics_port: int = setting(-1, "port of the Prometheus /metrics endpoint; -1: off, 0: any")
    metrics_host: str = setting("127.0.0.1", "address the metrics endpoint listens on")
    openai_port: int = setting(
        -1, "port of the OpenAI-compatible HTTP front (/v1/completions); -1: off, 0: any"
    )
    openai_host: str = setting("", "address the HTTP front listens on; empty: the same as host")
    session_store: str = setting(
        "",
        "where sessions live: empty for this process's memory, or a redis:// URL "
        "(shared by every replica: any of them continues any session)",
        secret=without_password,
    )
    session_store_connections: int = setting(
        32, "connections this replica keeps to the shared session store; calls wait for a free one"
    )
    session_store_timeout_s: float = setting(
        5.0,
        "seconds a call waits for a connection to the shared session store, and for its "
        "answer, before it fails with UNAVAILABLE",
    )
    session_idle_timeout_s: int = setting(600, "default idle time before a session closes")
    max_session_idle_timeout_s: int = setting(86_400, "largest idle timeout a caller may ask")
    max_tokens_per_request: int = setting(4096, "tokens one Step or Generate prompt may carry")
    max_text_chars: int = setting(
        16_384,
        "code points one text input may carry (checked before it is tokenized: tokenizing "
        "costs the event loop about 0.1 us per code point)",
    )
    max_generate_tokens: int = setting(4096, "largest max_tokens a Generate call may ask")
    generate_chunk_tokens: int = setting(
        16,
        "tokens a Generate advances per run of the generation graph (the step graph "
        "unrolled with sampling inside onnxruntime); 0: one step-graph run per token, "
        "sampled in numpy (the reference path)",
    )
    max_request_bytes: int = setting(
        512 * 1024,
        "largest gRPC message (and HTTP request body) the server accepts (decoding one "
        "holds the event loop: about 8 ms per MiB of packed token ids; 4096 steps of "
        "StepMany with request ids take ~250 KiB)",
    )
    max_message_bytes: int = setting(
        16 * 1024 * 1024,
        "largest gRPC message the server sends (a full distribution: 4 B per output)",
    )
    shutdown_grace_s: float = setting(10.0, "on SIGTERM, seconds in-flight calls may finish in")
    auth_tokens: str = setting(
        "",
        "bearer tokens as name:token pairs, comma-separated, each token 8+ characters; "
        "empty: no authentication",
        secret=True,
    )
    auth_tokens_file: str = setting("", "file of name:token lines (adds to auth_tokens)")
    auth_admins: str = setting(
        "",
        "with authentication on: the callers (names from the tokens, comma-separated) "
        "who may call ReloadModels, LoadModel and UnloadModel (and the KServe front's "
        "RepositoryModelLoad and RepositoryModelUnload); nobody else may",
    )
    state_keys: str = setting(
        "",
        "keys that sign exported session state and shared session records, comma-separated, "
        f"each at least {MIN_STATE_KEY_LENGTH} characters: the first signs, any verifies (key "
        "rotation); replicas and servers that import each other's exports share them; empty "
        "(and no state_keys_file): a random key of this process",
        secret=True,
    )
    state_keys_file: str = setting(
        "", "file of state keys, one per line (# starts a comment), after those of state_keys"
    )
    max_unbounded_state: float = setting(
        1e6,
        "largest magnitude an imported state may hold in a tensor its cell does not bound "
        "(rnn-relu activations, an LSTM's cell state); 1 .. 1e30",
    )
    tls_cert: str = setting("", "PEM certificate chain of the server; with tls_key: TLS")
    tls_key: str = setting("", "PEM private key of the server", secret=True)
    tls_client_ca: str = setting("", "PEM CA bundle: require client certificates (mutual TLS)")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_json: bool = setting(False, "log one JSON object per line")
    tracing: bool = setting(
        False,
        "export OpenTelemetry traces of every call, through engine and batcher; the "
        "standard OTEL_* variables configure the exporter (default otlp, to "
        "OTEL_EXPORTER_OTLP_ENDPOINT); needs pip install 'rnnserve-server[otel]'",
    )

    def validate(self) -> ServerConfig:
        """Check ranges; raise ValueError naming the setting and the allowed range."""
        checks: list[tuple[str, bool, str]] = [
            ("port", 0 <= self.port <= 65535, "0..65535"),
            ("provider", self.provider in PROVIDERS, " or ".join(PROVIDERS)),
            ("cuda_device_id", self.cuda_device_id >= 0, ">= 0"),
            ("intra_op_threads", self.intra_op_threads >= 0, ">= 0"),
            ("sequence_intra_op_threads", self.sequence_intra_op_threads >= 0, ">= 0"),
            ("workers", 1 <= self.workers <= 256, "1..256"),
            ("max_batch", 1 <= self.max_batch <= 65536, "1..65536"),
            ("batch_window_us", 0 <= self.batch_window_us <= 1_000_000, "0..1000000"),
            ("inline_run_us", 0 <= self.inline_run_us <= 1_000_000, "0..1000000"),
            ("max_sessions", self.max_sessions >= 1, ">= 1"),
            ("max_sessions_per_caller", self.max_sessions_per_caller >= 1, ">= 1"),
            ("max_calls_per_caller", self.max_calls_per_caller >= 1, ">= 1"),
            ("caller_tokens_per_s", self.caller_tokens_per_s >= 0, ">= 0 (0: no limit)"),
            (
                "caller_token_burst",
                not self.caller_tokens_per_s or self.caller_token_burst >= self.largest_request,
                f">= {self.largest_request} (max_tokens_per_message, and "
                "max_tokens_per_request + max_generate_tokens)",
            ),
            ("max_steps_per_message", self.max_steps_per_message >= 1, ">= 1"),
            ("max_tokens_per_message", self.max_tokens_per_message >= 1, ">= 1"),
            ("repository_poll_s", self.repository_poll_s >= 0, ">= 0"),
            ("metrics_port", -1 <= self.metrics_port <= 65535, "-1 (off) .. 65535"),
            ("openai_port", -1 <= self.openai_port <= 65535, "-1 (off) .. 65535"),
            (
                "session_store",
                not self.session_store
                or self.session_store.startswith(("redis://", "rediss://", "unix://")),
                "empty (in memory) or a redis://, rediss:// or unix:// URL",
            ),
            ("tls_key", bool(self.tls_cert) == bool(self.tls_key), "set with tls_cert"),
            ("tls_client_ca", not self.tls_client_ca or bool(self.tls_cert), "needs tls_cert"),
            ("session_store_connections", self.session_store_connections >= 1, ">= 1"),
            ("session_store_timeout_s", self.session_store_timeout_s > 0, "> 0"),
            (
                "state_keys",
                all(len(k) >= MIN_STATE_KEY_LENGTH for k in self.inline_state_keys)
                and len(self.inline_state_keys) <= MAX_STATE_KEYS,
                f"up to {MAX_STATE_KEYS} comma-separated keys of at least "
                f"{MIN_STATE_KEY_LENGTH} characters each",
            ),
            (
                "state_keys",
                not self.session_store or bool(self.inline_state_keys or self.state_keys_file),
                "set (or state_keys_file) with session_store: every replica that shares the "
                "store signs and checks session records with the same keys",
            ),
            ("max_unbounded_state", 1 <= self.max_unbounded_state <= 1e30, "1 .. 1e30"),
            ("session_idle_timeout_s", self.session_idle_timeout_s >= 1, ">= 1"),
            (
                "max_session_idle_timeout_s",
                self.max_session_idle_timeout_s >= self.session_idle_timeout_s,
                ">= session_idle_timeout_s",
            ),
            ("max_tokens_per_request", self.max_tokens_per_request >= 1, ">= 1"),
            ("max_text_chars", self.max_text_chars >= 1, ">= 1"),
            ("max_generate_tokens", self.max_generate_tokens >= 1, ">= 1"),
            ("max_request_bytes", self.max_request_bytes >= 1024, ">= 1024"),
            ("generate_chunk_tokens", 0 <= self.generate_chunk_tokens <= 256, "0..256"),
            ("max_message_bytes", self.max_message_bytes >= 1024, ">= 1024"),
            ("shutdown_grace_s", self.shutdown_grace_s >= 0, ">= 0"),
            (
                "log_level",
                self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"),
                "DEBUG, INFO, WARNING or ERROR",
            ),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} = {self.shown(name)!r} is invalid; allowed: {allowed}")
        return self

    @property
    def largest_request(self) -> int:
        """The most tokens one call may take from its caller's budget at once."""
        return max(
            self.max_tokens_per_message, self.max_tokens_per_request + self.max_generate_tokens
        )

    @property
    def inline_state_keys(self) -> list[str]:
        """The keys of the setting state_keys, in order (the first signs)."""
        return [k for k in (k.strip() for k in self.state_keys.split(",")) if k]

    def shown(self, name: str) -> Any:
        """The setting ``name`` as logs and messages may show it (secrets redacted)."""
        return shown_value(_FIELDS[name], getattr(self, name))

    def describe(self) -> dict[str, Any]:
        """Every setting as logs may show it (secrets redacted)."""
        return {name: self.shown(name) for name in _FIELDS}


_FIELDS: dict[str, Field[Any]] = {f.name: f for f in fields(ServerConfig)}
_FILE_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "Path": str}


def _convert(name: str, kind: Any, raw: str, *, secret: bool = False) -> Any:
    shown = "" if secret else f" = {raw!r}"
    if kind in (bool, "bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}{shown}: expected true or false")
    converter = {"int": int, "float": float, "str": str, "Path": Path}.get(
        kind if isinstance(kind, str) else kind.__name__, str
    )
    try:
        return converter(raw)
    except ValueError:
        raise ValueError(f"{name}{shown}: expected {converter.__name__}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings a TOML file gives, by name; ValueError (naming the file and the key)
    for an unknown key or a value of the wrong type."""
    table = read_table(path)
    check_keys(path, table, _FIELDS)
    values: dict[str, Any] = {}
    for name, value in table.items():
        setting_field = _FIELDS[name]
        kind = _FILE_KINDS[str(setting_field.type)]
        secret = bool(setting_field.metadata.get("secret"))
        values[name] = typed(path, name, value, kind, secret=secret)
        if setting_field.type == "Path":
            values[name] = Path(values[name])
    return values


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: the full usage lists every setting (see --help)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rnnserve-server",
        description="Serve a repository of RNN/GRU model packages over gRPC. Every setting "
        "is read from its default, then from the TOML file --config names, then from its "
        "environment variable (--max-sessions: RNNSERVE_MAX_SESSIONS), then from its flag; "
        "each overrides the ones before.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file of settings, keys named as the settings (max_sessions = 100); "
        f"unknown keys are refused (env {CONFIG_ENV})",
    )
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default}; env {ENV_PREFIX}{f.name.upper()})"
        if f.type in (bool, "bool"):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, default=None, metavar=f.name.upper(), help=help_text)
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Defaults, then the config file, then RNNSERVE_* variables, then flags; validated.

    A bad value exits with status 2 and a message naming the file, variable or flag.
    """
    environ = os.environ if environ is None else environ
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config_file = args.config or environ.get(CONFIG_ENV)
        values = read_config_file(Path(config_file)) if config_file else {}
        for f in fields(ServerConfig):
            env_name = ENV_PREFIX + f.name.upper()
            flag_value = getattr(args, f.name)
            secret = bool(f.metadata.get("secret"))
            if flag_value is not None:
                values[f.name] = (
                    flag_value
                    if isinstance(flag_value, bool)
                    else _convert(
                        "--" + f.name.replace("_", "-"), f.type, flag_value, secret=secret
                    )
                )
            elif env_name in environ:
                values[f.name] = _convert(env_name, f.type, environ[env_name], secret=secret)
        config = dataclasses.replace(ServerConfig(), **values).validate()
        _check_credentials(config)
        return config
    except ValueError as exc:
        parser.error(str(exc))


def _check_credentials(config: ServerConfig) -> None:
    """Malformed tokens and unreadable TLS files are usage errors at start, not failures
    once serving."""
    from rnnserve_server.auth import admins_of, load_tokens  # late: auth needs grpc

    admins_of(config.auth_admins, load_tokens(config.auth_tokens, config.auth_tokens_file))
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(config, name)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(
                    f"{name} = {config.shown(name)!r}: cannot read it: {exc.strerror or exc}"
                ) from None
