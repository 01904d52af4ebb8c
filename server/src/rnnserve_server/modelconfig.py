"""A model's own configuration: ``<models>/<name>/config.toml``, beside its versions.

Every table and key is optional; what a file leaves out keeps the server-wide setting::

    [versions]            # which versions load, and which one a call without one gets
    policy = "latest"     # "all" (the default), "latest" (the `latest` highest versions)
    latest = 2            #   or "specific" (exactly the versions `specific` lists)
    specific = [1, 3]
    default = 3           # pinned default version (default: the highest one loaded)

    [batching]
    max_batch = 64        # most steps one run of this model's step graph takes
    batch_window_us = 200 # microseconds to wait for more steps before a run

    [sessions]
    max_sessions = 1000   # open sessions of this model, all versions (the server-wide
                          #   limits also hold); not with a shared session store
    idle_timeout_s = 300  # default idle timeout of this model's sessions

    [sampling]            # a Generate call's values where the call leaves one unset
    temperature = 0.8
    top_k = 40
    top_p = 0.95
    max_tokens = 200

    [sampling.allowed]    # what a call may ask: [lowest, highest], both included
    temperature = [0.0, 1.5]
    top_k = [0, 100]
    top_p = [0.5, 1.0]
    max_tokens = [1, 1000]

Values may narrow the server-wide limits, never pass them (``ModelLimits``). The file is
read at start and at every reload. A file that cannot be used is a ``ModelConfigError``:
one line naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnserve_server.config import ServerConfig
from rnnserve_server.sampling import MAX_TEMPERATURE
from rnnserve_server.tomlfile import TomlError, check_keys, read_table, typed

MODEL_CONFIG_FILE = "config.toml"
VERSION_POLICIES = ("all", "latest", "specific")
LARGEST = 2**31 - 1  # the largest integer a key takes (model versions are int32)

# The sampling values a Generate call gets where neither it nor the model sets one; the
# proto documents them (GenerateRequest).
BUILT_IN_SAMPLING: dict[str, float | int] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "max_tokens": 64,
}


class ModelConfigError(TomlError):
    """A model's config.toml that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ModelLimits:
    """The server-wide settings a model's configuration must stay within."""

    max_sessions: int = LARGEST
    max_session_idle_timeout_s: int = LARGEST
    max_generate_tokens: int = LARGEST
    shared_store: bool = False  # sessions in Redis: no per-model session count there

    @classmethod
    def of(cls, config: ServerConfig) -> ModelLimits:
        return cls(
            max_sessions=config.max_sessions,
            max_session_idle_timeout_s=config.max_session_idle_timeout_s,
            max_generate_tokens=config.max_generate_tokens,
            shared_store=bool(config.session_store),
        )


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions load, and its default version (0: the highest)."""

    policy: str = "all"
    latest: int = 1
    specific: tuple[int, ...] = ()
    default: int = 0

    def serves(self, versions: list[int]) -> set[int]:
        """The versions, of those on disk, that this policy loads."""
        if self.policy == "latest":
            return set(sorted(versions)[-self.latest :])
        if self.policy == "specific":
            return set(versions) & set(self.specific)
        return set(versions)

    def describe(self) -> str:
        """The policy as a message names it, e.g. ``latest 2``."""
        if self.policy == "latest":
            return f"latest {self.latest}"
        if self.policy == "specific":
            return f"specific {list(self.specific)}"
        return "all"


@dataclass(frozen=True)
class Range:
    """An inclusive range of values a call may ask for."""

    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.low:g} .. {self.high:g}"


@dataclass(frozen=True)
class ModelConfig:
    """A model's config.toml, parsed and checked; None: the server-wide setting."""

    path: Path | None = None  # None: the model has no config.toml
    versions: VersionPolicy = field(default_factory=VersionPolicy)
    max_batch: int | None = None
    batch_window_us: int | None = None
    max_sessions: int | None = None
    idle_timeout_s: int | None = None
    sampling: dict[str, float | int] = field(default_factory=dict)  # defaults
    allowed: dict[str, Range] = field(default_factory=dict)

    @classmethod
    def of(cls, model_dir: Path, limits: ModelLimits | None = None) -> ModelConfig:
        """The configuration of the model in ``model_dir``: its config.toml, or none."""
        path = model_dir / MODEL_CONFIG_FILE
        if not path.exists():
            return cls()
        try:
            return _parse(path, read_table(path), limits or ModelLimits())
        except TomlError as exc:
            raise ModelConfigError(str(exc)) from None

    def batching(self, server: ServerConfig) -> tuple[int, int]:
        """This model's max_batch and batch window (microseconds): its own, else the
        server's."""
        window_us = server.batch_window_us if self.batch_window_us is None else self.batch_window_us
        return self.max_batch or server.max_batch, window_us

    def default_sampling(self, name: str) -> float | int:
        """The value a Generate call gets for ``name`` where it gives none."""
        return self.sampling.get(name, BUILT_IN_SAMPLING[name])


_TABLES = ("versions", "batching", "sessions", "sampling")
_SAMPLING_KINDS: dict[str, type] = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "max_tokens": int,
}
# What each sampling value may be at all (the proto's ranges; max_tokens: the server's
# limit); allowed ranges lie inside.
_SAMPLING_DOMAINS: dict[str, tuple[float, float, str]] = {
    "temperature": (0.0, MAX_TEMPERATURE, f"0 .. {MAX_TEMPERATURE:g}"),
    "top_k": (0, LARGEST, ">= 0 (0: no limit)"),
    "top_p": (math.ulp(0.0), 1.0, "(0, 1]"),
}


class _Reader:
    """Typed, range-checked values of one table of a config.toml."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str, known: tuple[str, ...]):
        check_keys(path, table, known, prefix)
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, problem: str) -> ModelConfigError:
        return ModelConfigError(f"{self.path}: {self.prefix}{key} {problem}")

    def get(self, key: str, kind: type) -> Any:
        if key not in self.table:
            return None
        return typed(self.path, self.prefix + key, self.table[key], kind)

    def integer(self, key: str, low: int, high: int, allowed: str) -> int | None:
        value: int | None = self.get(key, int)
        if value is not None and not low <= value <= high:
            raise self.fail(key, f"= {value} is invalid; allowed: {allowed}")
        return value

    def number(self, key: str, low: float, high: float, allowed: str) -> float | None:
        value: float | None = self.get(key, float)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise self.fail(key, f"= {value:g} is invalid; allowed: {allowed}")
        return value

    def table_of(self, key: str, known: tuple[str, ...]) -> _Reader:
        inner = self.table.get(key, {})
        if not isinstance(inner, dict):
            raise self.fail(key, "must be a table ([" + self.prefix + key + "])")
        return _Reader(self.path, inner, f"{self.prefix}{key}.", known)


def _parse(path: Path, table: dict[str, Any], limits: ModelLimits) -> ModelConfig:
    top = _Reader(path, table, "", _TABLES)
    batching = top.table_of("batching", ("max_batch", "batch_window_us"))
    sessions = top.table_of("sessions", ("max_sessions", "idle_timeout_s"))
    if "max_sessions" in sessions.table and limits.shared_store:
        raise sessions.fail(
            "max_sessions",
            "cannot be counted with a shared session store (session_store): there the "
            "server-wide max_sessions and max_sessions_per_caller hold",
        )
    sampling, allowed = _parse_sampling(
        top.table_of("sampling", (*_SAMPLING_KINDS, "allowed")), limits
    )
    return ModelConfig(
        path=path,
        versions=_parse_versions(
            top.table_of("versions", ("policy", "latest", "specific", "default"))
        ),
        max_batch=batching.integer("max_batch", 1, 65536, "1..65536"),
        batch_window_us=batching.integer("batch_window_us", 0, 1_000_000, "0..1000000"),
        max_sessions=sessions.integer(
            "max_sessions", 1, limits.max_sessions, _up_to(limits.max_sessions, "max_sessions")
        ),
        idle_timeout_s=sessions.integer(
            "idle_timeout_s",
            1,
            limits.max_session_idle_timeout_s,
            _up_to(limits.max_session_idle_timeout_s, "max_session_idle_timeout_s"),
        ),
        sampling=sampling,
        allowed=allowed,
    )


def _parse_versions(versions: _Reader) -> VersionPolicy:
    policy = versions.get("policy", str) or "all"
    if policy not in VERSION_POLICIES:
        raise versions.fail(
            "policy", f"= {policy!r} is invalid; allowed: {', '.join(VERSION_POLICIES)}"
        )
    latest = versions.integer("latest", 1, LARGEST, ">= 1")
    if latest is not None and policy != "latest":
        raise versions.fail("latest", f'is only for policy = "latest" (the policy is {policy!r})')
    raw_specific = versions.table.get("specific")
    if raw_specific is not None and policy != "specific":
        raise versions.fail(
            "specific", f'is only for policy = "specific" (the policy is {policy!r})'
        )
    specific: tuple[int, ...] = ()
    if policy == "specific":
        if not isinstance(raw_specific, list) or not raw_specific:
            raise versions.fail(
                "specific", 'must list the versions to serve with policy = "specific"'
            )
        for n, version in enumerate(raw_specific):
            typed(versions.path, f"{versions.prefix}specific[{n}]", version, int)
            if not 1 <= version <= LARGEST:
                raise versions.fail(f"specific[{n}]", f"= {version} is invalid; allowed: >= 1")
        specific = tuple(sorted(set(raw_specific)))
    default = versions.integer("default", 1, LARGEST, ">= 1") or 0
    if default and policy == "specific" and default not in specific:
        raise versions.fail(
            "default", f"= {default} is not one of the versions served, {list(specific)}"
        )
    return VersionPolicy(policy=policy, latest=latest or 1, specific=specific, default=default)


def _up_to(limit: int, setting: str) -> str:
    """The allowed range of a count the server-wide ``setting`` caps at ``limit``."""
    return ">= 1" if limit == LARGEST else f"1..{limit} (the server's {setting})"


def _sampling_domain(key: str, limits: ModelLimits) -> tuple[float, float, str]:
    """What a sampling value may be at all: the proto's range, within the server's limits."""
    if key == "max_tokens":
        top = limits.max_generate_tokens
        return 1, top, _up_to(top, "max_generate_tokens")
    return _SAMPLING_DOMAINS[key]


def _parse_sampling(
    sampling: _Reader, limits: ModelLimits
) -> tuple[dict[str, float | int], dict[str, Range]]:
    defaults: dict[str, float | int] = {}
    for key, kind in _SAMPLING_KINDS.items():
        low, high, domain = _sampling_domain(key, limits)
        value = (
            sampling.number(key, low, high, domain)
            if kind is float
            else sampling.integer(key, int(low), int(high), domain)
        )
        if value is not None:
            defaults[key] = value
    table = sampling.table_of("allowed", tuple(_SAMPLING_KINDS))
    ranges: dict[str, Range] = {}
    for key, kind in _SAMPLING_KINDS.items():
        raw = table.table.get(key)
        if raw is None:
            continue
        low, high, domain = _sampling_domain(key, limits)
        if not isinstance(raw, list) or len(raw) != 2:
            raise table.fail(key, f"must be [lowest, highest], e.g. [{low:g}, {high:g}]")
        bounds = [
            typed(table.path, f"{table.prefix}{key}[{n}]", v, kind) for n, v in enumerate(raw)
        ]
        if not (low <= bounds[0] <= bounds[1] <= high):
            raise table.fail(key, f"= {raw} is invalid: lowest <= highest, both within {domain}")
        ranges[key] = Range(bounds[0], bounds[1])
        default = defaults.get(key, BUILT_IN_SAMPLING[key])
        if default not in ranges[key]:
            where = (
                f"sampling.{key} = {default:g}"
                if key in defaults
                else f"the default {key} {default:g}"
            )
            raise table.fail(key, f"= {raw} excludes {where}; set sampling.{key} within it")
    return defaults, ranges
