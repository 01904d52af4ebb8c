"""The model repository: every package under ``<models>/<name>/<version>/``, and each
model's ``config.toml`` beside its versions (modelconfig).

Each package is validated on its own; a broken one is logged and listed in ``broken``
and never stops the others from serving. A model's version policy decides which of its
versions load; its default version is the one its config pins, else the highest loaded.
A config.toml that cannot be used is listed in ``broken`` too: at start its model is not
served; on a reload the model keeps the configuration accepted before.

``load_model`` rescans one model's folder alone; ``unload`` takes a model or version out
of service and keeps it out (``held``) through rescans until ``load_model`` names it.
A model that a trainer is still writing into the repository (``trainingmarks.py``) is
unavailable, not unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve_server.errors import InvalidArgument, NotFound, Unavailable, shown
from rnnserve_server.manifest import NAME_PATTERN, PackageError
from rnnserve_server.modelconfig import (
    MODEL_CONFIG_FILE,
    ModelConfig,
    ModelConfigError,
    ModelLimits,
)
from rnnserve_server.modelpackage import ModelPackage, load_package
from rnnserve_server.runtime import ModelRuntime, ProviderChoice
from rnnserve_server.trainingmarks import TrainingMark, read_mark, read_marks

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Model:
    """A loaded model version: its package, the runtime that runs its graphs and its
    model's configuration (replaced by every reload that changes it)."""

    package: ModelPackage
    runtime: ModelRuntime
    config: ModelConfig = field(default_factory=ModelConfig)

    @property
    def name(self) -> str:
        return self.package.manifest.name

    @property
    def version(self) -> int:
        return self.package.manifest.version


@dataclass(frozen=True)
class ReloadResult:
    added: list[str]
    removed: list[str]
    refused: dict[Path, str]


@dataclass
class Repository:
    root: Path
    providers: ProviderChoice
    limits: ModelLimits = field(default_factory=ModelLimits)
    models: dict[tuple[str, int], Model] = field(default_factory=dict)
    broken: dict[Path, str] = field(default_factory=dict)
    configs: dict[str, ModelConfig] = field(default_factory=dict)
    held: set[tuple[str, int]] = field(default_factory=set)  # (name, version or 0: all)
    _stamps: dict[Path, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)
    _not_served: set[Path] = field(default_factory=set)
    _missing_defaults: set[tuple[str, int]] = field(default_factory=set)

    @classmethod
    def load(
        cls, root: Path, providers: ProviderChoice, limits: ModelLimits | None = None
    ) -> Repository:
        repo = cls(root=root, providers=providers, limits=limits or ModelLimits())
        if not root.is_dir():
            log.warning("model repository %s does not exist; serving no models", root)
        repo.reload()
        return repo

    def reload(self, only: str | None = None) -> ReloadResult:
        """Rescan the repository (``only``: that model's folder alone, every other model
        kept as it is); (re)load packages whose files changed, drop vanished ones and
        versions the version policy no longer serves; reread the config.toml files.

        Unchanged packages keep their loaded runtime; a package or config.toml refused
        before is not logged again until its files change.
        """

        def rescanned(name: str) -> bool:
            return only is None or name == only

        if only is not None:
            model_dirs = [self.root / only]
        else:
            model_dirs = _entries(self.root) if self.root.is_dir() else []
        refused = {p: r for p, r in self.broken.items() if not rescanned(p.parent.name)}
        configs = {n: c for n, c in self.configs.items() if not rescanned(n)}
        not_served = {p for p in self._not_served if not rescanned(p.parent.name)}
        found: list[Path] = []
        for model_dir in model_dirs:
            config = self._config(model_dir, refused)
            if config is not None:
                configs[model_dir.name] = config
                found += self._versions_to_load(model_dir, config, not_served)
        self._not_served = not_served
        models = {key: m for key, m in self.models.items() if not rescanned(m.name)}
        by_path = {m.package.path: m for m in self.models.values()}
        added: list[str] = []
        for path in found:
            stamp = _stamp(path)
            unchanged = self._stamps.get(path) == stamp
            self._stamps[path] = stamp
            if unchanged and path in by_path:
                models[by_path[path].package.key] = by_path[path]
                continue
            if unchanged and path in self.broken:
                refused[path] = self.broken[path]
                continue
            try:
                package = load_package(path)
                model = Model(package=package, runtime=ModelRuntime(package, self.providers))
            except PackageError as exc:
                refused[path] = str(exc)
                log.error(
                    "refusing model package %s: %s",
                    path,
                    exc,
                    extra={"model": f"{path.parent.name}/{path.name}"},
                )
                continue
            models[package.key] = model
            added.append(f"{model.name}/{model.version}")
            manifest = package.manifest
            log.info(
                "loaded model %s version %d (%s, %s, %d x %d, %s) on %s",
                model.name,
                model.version,
                manifest.shape,
                manifest.cell,
                manifest.layers,
                manifest.hidden_size,
                (
                    f"vocabulary {package.tokenizer.size}"
                    if package.tokenizer is not None
                    else f"vectors of {manifest.input.size}"
                ),
                ",".join(model.runtime.providers),
                extra={"model": f"{model.name}/{model.version}"},
            )
        removed = [f"{n}/{v}" for n, v in sorted(set(self.models) - set(models))]
        for name in removed:
            log.info(
                "unloaded model %s (its package is gone or no longer served)",
                name,
                extra={"model": name},
            )
        for path in set(self._stamps) - set(found):
            if rescanned(path.parent.name):
                del self._stamps[path]
        for model in models.values():
            model.config = configs[model.name]
        self.models, self.broken, self.configs = models, refused, configs
        self._check_defaults()
        return ReloadResult(added=added, removed=removed, refused=refused)

    def _versions_to_load(
        self, model_dir: Path, config: ModelConfig, not_served: set[Path]
    ) -> list[Path]:
        """The model's version folders its policy serves (and any misnamed one, which
        loading then refuses); adds the others to ``not_served``."""
        if (model_dir.name, 0) in self.held:
            return []
        versions = _entries(model_dir)
        served = config.versions.serves([int(p.name) for p in versions if _numbered(p)])
        load = []
        for path in versions:
            if _numbered(path) and (model_dir.name, int(path.name)) in self.held:
                continue  # out of service until LoadModel
            if not _numbered(path) or int(path.name) in served:
                load.append(path)
                continue
            not_served.add(path)
            if path not in self._not_served:
                log.info(
                    "not loading model %s version %s: version policy %s (%s)",
                    model_dir.name,
                    path.name,
                    config.versions.describe(),
                    config.path,
                    extra={"model": f"{model_dir.name}/{path.name}"},
                )
        return load

    def _config(self, model_dir: Path, refused: dict[Path, str]) -> ModelConfig | None:
        """The model's configuration, or None if it has none that can be used (its
        config.toml refused, and none accepted before)."""
        path = model_dir / MODEL_CONFIG_FILE
        earlier = self.configs.get(model_dir.name)
        try:
            config = ModelConfig.of(model_dir, self.limits)
        except ModelConfigError as exc:
            if self.broken.get(path) != str(exc):
                log.error(
                    "refusing %s: %s; %s",
                    path,
                    exc.args[0].removeprefix(f"{path}: "),
                    "the model keeps the configuration accepted before"
                    if earlier is not None
                    else "its model is not served",
                    extra={"model": model_dir.name},
                )
            refused[path] = str(exc)
            return earlier
        if config.path is not None and config != earlier:
            log.info(
                "model %s: %s applied (version policy %s%s)",
                model_dir.name,
                path,
                config.versions.describe(),
                f", default version {config.versions.default}" if config.versions.default else "",
                extra={"model": model_dir.name},
            )
        return config

    def _check_defaults(self) -> None:
        """Log once each model whose pinned default version is not loaded."""
        missing = set()
        for name, config in self.configs.items():
            pinned = config.versions.default
            if pinned and (name, pinned) not in self.models:
                missing.add((name, pinned))
                if (name, pinned) not in self._missing_defaults:
                    log.error(
                        "model %s: the default version %d that %s pins is not loaded; "
                        "calls that name no version answer NOT_FOUND",
                        name,
                        pinned,
                        config.path,
                        extra={"model": name},
                    )
        self._missing_defaults = missing

    def load_model(self, name: str) -> ReloadResult:
        """Rescan the folder of model ``name`` alone, bringing back what ``unload`` held."""
        if not NAME_PATTERN.match(name):
            raise InvalidArgument(
                f"name = {shown(name)} is not a model name; allowed: 1..128 letters, digits, "
                "'_', '.' and '-', starting with a letter or digit"
            )
        if not (self.root / name).is_dir():
            raise NotFound(f"the model repository {self.root} has no model folder {shown(name)}")
        self.held = {held for held in self.held if held[0] != name}
        return self.reload(only=name)

    def unload(self, name: str, version: int = 0) -> list[str]:
        """Take the model's loaded versions (``version`` 0: all of them) out of service,
        and keep them out through rescans until ``load_model(name)``; "name/version" each."""
        keys = sorted(key for key in self.models if key[0] == name and version in (0, key[1]))
        if not keys:
            raise self._not_loaded(name, version)
        self.held.add((name, version))
        for key in keys:
            model = self.models.pop(key)
            self._stamps.pop(model.package.path, None)
            log.info(
                "unloaded model %s version %d (UnloadModel; LoadModel brings it back)",
                *key,
                extra={"model": f"{key[0]}/{key[1]}"},
            )
        self._check_defaults()
        return [f"{n}/{v}" for n, v in keys]

    def unloaded(self) -> list[tuple[str, int]]:
        """The versions that ``unload`` keeps out of service, as (name, version): those on
        disk that the model's version policy serves, so those ``load_model`` brings back."""
        out: set[tuple[str, int]] = set()
        for name, version in self.held:
            folder = self.root / name
            on_disk = (
                [int(p.name) for p in _entries(folder) if _numbered(p)] if folder.is_dir() else []
            )
            served = self.configs.get(name, ModelConfig()).versions.serves(on_disk)
            out.update((name, v) for v in served if version in (0, v))
        return sorted(out)

    def get(self, name: str, version: int = 0) -> Model:
        """A model version; version 0 means the model's default version: the one its
        config.toml pins, else the highest loaded."""
        if version:
            model = self.models.get((name, version))
            if model is None:
                raise self._not_loaded(name, version)
            return model
        versions = sorted(v for n, v in self.models if n == name)
        if not versions:
            raise self._not_loaded(name, version)
        config = self.configs.get(name, ModelConfig())
        pinned = config.versions.default
        if pinned and pinned not in versions:
            raise NotFound(
                f"model {shown(name)}: its default version {pinned} ({config.path} pins it) "
                f"is not loaded; loaded: {versions}; name one of them"
            )
        return self.models[(name, pinned or versions[-1])]

    def _not_loaded(self, name: str, version: int) -> NotFound:
        """NOT_FOUND for a model (version 0) or version that is not loaded, naming what is;
        raises UNAVAILABLE instead for a model of which no version is loaded because it is
        still training or was just written (``_raise_if_training``)."""
        known = sorted(v for n, v in self.models if n == name)
        if not known:
            self._raise_if_training(name)
            names = sorted({n for n, _ in self.models})
            return NotFound(f"model {shown(name)} is not loaded; loaded models: {names}")
        return NotFound(f"model {shown(name)} has no version {version}; loaded: {known}")

    def training(self) -> list[TrainingMark]:
        """The models being trained into the repository now, by name."""
        return list(read_marks(self.root).values())

    def _raise_if_training(self, name: str) -> None:
        """UNAVAILABLE if ``name`` is training, or its package is written but not yet
        loaded (read now: a mark changes between rescans)."""
        directory = self.root / name
        if not NAME_PATTERN.match(name) or not directory.is_dir():
            return  # no package could bear the name: nothing on disk to look at
        mark = read_mark(directory)
        if mark is not None:
            raise Unavailable(
                f"model {shown(name)} is still training ({mark.describe()}); it is served "
                "as soon as its package is written"
            )
        if any(
            (p / "manifest.json").is_file() and self._awaits_loading(p)
            for p in directory.iterdir()
            if p.is_dir() and not p.name.startswith(".")
        ):
            raise Unavailable(
                f"model {shown(name)} has just been written and is not loaded yet; the next "
                "rescan of the repository loads it (repository_poll_s, or ReloadModels)"
            )

    def _awaits_loading(self, path: Path) -> bool:
        """Whether the next rescan would load the package at ``path``: it is not refused,
        not left out by its model's version policy and not held out by UnloadModel."""
        name = path.parent.name
        held = (name, 0) in self.held or (_numbered(path) and (name, int(path.name)) in self.held)
        return path not in self.broken and path not in self._not_served and not held

    def list(self) -> list[Model]:
        return [self.models[key] for key in sorted(self.models)]


def _entries(folder: Path) -> list[Path]:
    """The sub-folders of a repository or model folder; dot-names are exports still being
    written."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _numbered(path: Path) -> bool:
    """A version folder's name: a version number as the manifest writes it (1, not 01)."""
    return path.name.isdigit() and path.name == str(int(path.name))


def _stamp(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What identifies a package's content on disk: each file's name, size and mtime."""
    entries = []
    for file in sorted(path.iterdir()):
        try:
            info = file.stat()
        except OSError:
            continue
        entries.append((file.name, info.st_size, info.st_mtime_ns))
    return tuple(entries)
