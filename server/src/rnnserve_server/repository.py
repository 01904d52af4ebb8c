"""The model repository: every package under ``<models>/<name>/<version>/``.

Each package is validated on its own; a broken one is logged and listed in
``broken`` and never stops the others from serving. A model's default version is the
highest version that loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve_server.errors import NotFound, shown
from rnnserve_server.modelpackage import ModelPackage, PackageError, load_package
from rnnserve_server.runtime import ModelRuntime, ProviderChoice

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Model:
    """A loaded model version: its package and the runtime that runs its graphs."""

    package: ModelPackage
    runtime: ModelRuntime

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
    models: dict[tuple[str, int], Model] = field(default_factory=dict)
    broken: dict[Path, str] = field(default_factory=dict)
    _stamps: dict[Path, tuple[tuple[str, int, int], ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, providers: ProviderChoice) -> Repository:
        repo = cls(root=root, providers=providers)
        if not root.is_dir():
            log.warning("model repository %s does not exist; serving no models", root)
        repo.reload()
        return repo

    def reload(self) -> ReloadResult:
        """Rescan the repository; (re)load packages whose files changed, drop vanished ones.

        Unchanged packages keep their loaded runtime; a package refused before is not
        logged again until its files change.
        """
        found = (
            sorted(
                p
                for p in self.root.glob("*/*")
                if p.is_dir() and not p.name.startswith(".") and not p.parent.name.startswith(".")
            )
            if self.root.is_dir()
            else []
        )  # dot-names: exports still being written
        models: dict[tuple[str, int], Model] = {}
        by_path = {m.package.path: m for m in self.models.values()}
        added: list[str] = []
        refused: dict[Path, str] = {}
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
            log.info("unloaded model %s (its package is gone)", name, extra={"model": name})
        for path in set(self._stamps) - set(found):
            del self._stamps[path]
        self.models, self.broken = models, refused
        return ReloadResult(added=added, removed=removed, refused=refused)

    def get(self, name: str, version: int = 0) -> Model:
        """A model version; version 0 means the default (highest loaded) version."""
        if version:
            model = self.models.get((name, version))
            if model is None:
                known = sorted(v for n, v in self.models if n == name)
                if not known:
                    raise NotFound(f"model {shown(name)} is not loaded")
                raise NotFound(f"model {shown(name)} has no version {version}; loaded: {known}")
            return model
        versions = [v for n, v in self.models if n == name]
        if not versions:
            names = sorted({n for n, _ in self.models})
            raise NotFound(f"model {shown(name)} is not loaded; loaded models: {names}")
        return self.models[(name, max(versions))]

    def list(self) -> list[Model]:
        return [self.models[key] for key in sorted(self.models)]


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
