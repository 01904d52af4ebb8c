"""The model repository: every package under ``<models>/<name>/<version>/``.

Each package is validated on its own; a broken one is logged and listed in
``broken`` and never stops the others from serving. A model's default version is the
highest version that loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rnnserve_server.errors import NotFound
from rnnserve_server.modelpackage import ModelPackage, PackageError, load_package
from rnnserve_server.runtime import ModelRuntime, ProviderChoice

log = logging.getLogger(__name__)


@dataclass
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


@dataclass
class Repository:
    root: Path
    models: dict[tuple[str, int], Model] = field(default_factory=dict)
    broken: dict[Path, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, providers: ProviderChoice) -> Repository:
        repo = cls(root=root)
        if not root.is_dir():
            log.warning("model repository %s does not exist; serving no models", root)
            return repo
        for path in sorted(p for p in root.glob("*/*") if p.is_dir()):
            try:
                package = load_package(path)
                model = Model(package=package, runtime=ModelRuntime(package, providers))
            except PackageError as exc:
                repo.broken[path] = str(exc)
                log.error(
                    "refusing model package %s: %s",
                    path,
                    exc,
                    extra={"model": f"{path.parent.name}/{path.name}"},
                )
                continue
            repo.models[package.key] = model
            log.info(
                "loaded model %s version %d (%s, %s, %d x %d, vocabulary %d) on %s",
                model.name,
                model.version,
                package.manifest.shape,
                package.manifest.cell,
                package.manifest.layers,
                package.manifest.hidden_size,
                package.tokenizer.size,
                ",".join(model.runtime.providers),
                extra={"model": f"{model.name}/{model.version}"},
            )
        return repo

    def get(self, name: str, version: int = 0) -> Model:
        """A model version; version 0 means the default (highest loaded) version."""
        if version:
            model = self.models.get((name, version))
            if model is None:
                known = sorted(v for n, v in self.models if n == name)
                if not known:
                    raise NotFound(f"model {name!r} is not loaded")
                raise NotFound(f"model {name!r} has no version {version}; loaded: {known}")
            return model
        versions = [v for n, v in self.models if n == name]
        if not versions:
            names = sorted({n for n, _ in self.models})
            raise NotFound(f"model {name!r} is not loaded; loaded models: {names}")
        return self.models[(name, max(versions))]

    def list(self) -> list[Model]:
        return [self.models[key] for key in sorted(self.models)]
