"""The model registry: one folder per version, aliases ``champion`` and ``challenger``.

Layout under ``model.registry_dir``::

    versions/<version>/weights.pt          state dict (loaded with ``weights_only=True``)
                       config.json         ModelConfig: the model is built from it, nothing else
                       scaler.json         RobustScaler fitted on the training rows
                       feature_spec.json   hash, version and ordered names of the feature spec
                       output_schema.json  what each of the 20 outputs means
                       training.json       training range, symbols, recipe, seed
                       metrics.json        validation and held-out evaluation figures
                       manifest.json       sha256 of every file above
    aliases.json                            {"champion": …, "challenger": …, "history": [...]}

Loading verifies every hash and the feature-spec hash against the running code; any difference
is a clear ``ModelIntegrityError`` / ``FeatureSpecMismatchError``, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core.errors import PermanentError
from ml.features import FEATURE_SPEC, FeatureSpecMismatchError
from ml.features.spec import FeatureSpec
from ml.model.config import ModelConfig
from ml.model.network import UnifiedPatchTST, build_model
from ml.model.schema import OutputSchema
from ml.scaling import RobustScaler

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
FILES = (
    "weights.pt",
    "config.json",
    "scaler.json",
    "feature_spec.json",
    "output_schema.json",
    "training.json",
    "metrics.json",
)
MANIFEST = "manifest.json"


class ModelIntegrityError(PermanentError):
    """A stored version is incomplete or a file differs from its manifest."""


class UnknownVersionError(PermanentError):
    """No version or alias of that name."""


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    model: UnifiedPatchTST
    config: ModelConfig
    scaler: RobustScaler
    schema: OutputSchema
    training: dict[str, Any]
    metrics: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()


class ModelRegistry:
    def __init__(self, root: Path, spec: FeatureSpec = FEATURE_SPEC) -> None:
        self.root = Path(root)
        self.spec = spec

    # -- names ---------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        folder = self.root / "versions"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / MANIFEST).is_file())

    def aliases(self) -> dict[str, Any]:
        path = self.root / "aliases.json"
        if not path.is_file():
            return {"history": []}
        doc: dict[str, Any] = json.loads(path.read_text())
        doc.setdefault("history", [])
        return doc

    def alias(self, name: str) -> str | None:
        value = self.aliases().get(name)
        return str(value) if value else None

    def resolve(self, ref: str) -> str:
        """A version id from a version id or an alias."""
        if ref in ALIASES:
            version = self.alias(ref)
            if version is None:
                raise UnknownVersionError(f"no {ref} model in the registry {self.root}")
            return version
        if ref not in self.versions():
            known = ", ".join(self.versions()[-5:]) or "none"
            raise UnknownVersionError(f"no model version {ref!r} in {self.root} (latest: {known})")
        return ref

    # -- writing -------------------------------------------------------------------------------
    def save(
        self,
        model: UnifiedPatchTST,
        scaler: RobustScaler,
        *,
        training: dict[str, Any],
        metrics: dict[str, Any],
        created: datetime | None = None,
    ) -> str:
        """Store a new version; the first one becomes ``champion``, later ones ``challenger``."""
        if scaler.spec_hash != self.spec.hash:
            raise FeatureSpecMismatchError("the scaler was fitted for another feature spec")
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        when = created or datetime.now(UTC)
        version = f"{when:%Y%m%dT%H%M%SZ}-{hashlib.sha256(weights).hexdigest()[:8]}"
        folder = self.root / "versions" / version
        if folder.exists():
            raise ModelIntegrityError(f"version {version} exists already")
        files = {
            "weights.pt": weights,
            "config.json": model.config.model_dump_json(indent=1).encode(),
            "scaler.json": scaler.to_json().encode(),
            "feature_spec.json": _json_bytes(
                {"hash": self.spec.hash, "version": self.spec.version, "names": list(self.spec.names)}
            ),
            "output_schema.json": OutputSchema.from_config(model.config).to_json().encode(),
            "training.json": _json_bytes(training),
            "metrics.json": _json_bytes(metrics),
        }
        staging = self.root / "versions" / f".{version}.tmp"
        staging.mkdir(parents=True)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        (staging / MANIFEST).write_bytes(self._manifest(staging, version, when))
        # The folder appears whole or not at all.
        os.replace(staging, folder)
        aliases = self.aliases()
        self._set_alias(aliases, CHALLENGER if aliases.get(CHAMPION) else CHAMPION, version)
        return version

    def update_metrics(self, ref: str, metrics: dict[str, Any]) -> None:
        """Merge evaluation figures into a version and re-sign its manifest (after verifying it)."""
        version = self.resolve(ref)
        folder = self.root / "versions" / version
        manifest = self._verified_manifest(folder, version)
        current = json.loads((folder / "metrics.json").read_text())
        _write_atomic(folder / "metrics.json", _json_bytes({**current, **metrics}))
        created = datetime.fromisoformat(manifest["created"])
        _write_atomic(folder / MANIFEST, self._manifest(folder, version, created))

    def promote(self, ref: str) -> str:
        version = self.resolve(ref)
        self.load(version)  # never promote a version that would not load
        aliases = self.aliases()
        if aliases.get(CHALLENGER) == version:
            aliases[CHALLENGER] = None
        self._set_alias(aliases, CHAMPION, version)
        return version

    def rollback(self) -> str:
        """Move ``champion`` back to the version it pointed to before the last change."""
        aliases = self.aliases()
        previous = [h for h in aliases["history"] if h["alias"] == CHAMPION]
        if len(previous) < 2:
            raise UnknownVersionError("no earlier champion to roll back to")
        current, before = previous[-1]["version"], previous[-2]["version"]
        aliases["history"] = [h for h in aliases["history"] if h is not previous[-1]]
        aliases[CHAMPION] = before
        aliases["history"].append(
            {"alias": "rollback", "version": current, "at": datetime.now(UTC).isoformat()}
        )
        self._write_aliases(aliases)
        return before

    # -- reading -------------------------------------------------------------------------------
    def load(self, ref: str, device: torch.device | str = "cpu") -> LoadedVersion:
        version = self.resolve(ref)
        folder = self.root / "versions" / version
        self._verified_manifest(folder, version)
        spec_doc = json.loads((folder / "feature_spec.json").read_text())
        self.spec.check_hash(spec_doc["hash"], f"model version {version}")
        config = ModelConfig.model_validate_json((folder / "config.json").read_text())
        schema = OutputSchema.from_json((folder / "output_schema.json").read_text())
        if schema != OutputSchema.from_config(config):
            raise ModelIntegrityError(f"version {version}: output_schema.json disagrees with config.json")
        scaler = RobustScaler.from_json((folder / "scaler.json").read_text(), spec=self.spec)
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        model = build_model(config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelIntegrityError(f"version {version}: weights do not fit its config: {exc}") from exc
        model.to(device).eval()
        return LoadedVersion(
            version=version,
            model=model,
            config=config,
            scaler=scaler,
            schema=schema,
            training=json.loads((folder / "training.json").read_text()),
            metrics=json.loads((folder / "metrics.json").read_text()),
        )

    def load_scaler(self, ref: str) -> RobustScaler:
        """Just the scaler, for feature workers (verified like a full load)."""
        version = self.resolve(ref)
        folder = self.root / "versions" / version
        self._verified_manifest(folder, version)
        self.spec.check_hash(
            json.loads((folder / "feature_spec.json").read_text())["hash"], f"model version {version}"
        )
        return RobustScaler.from_json((folder / "scaler.json").read_text(), spec=self.spec)

    def describe(self, ref: str) -> dict[str, Any]:
        version = self.resolve(ref)
        folder = self.root / "versions" / version
        manifest = self._verified_manifest(folder, version)
        aliases = self.aliases()
        return {
            "version": version,
            "aliases": [a for a in ALIASES if aliases.get(a) == version],
            "created": manifest["created"],
            "training": json.loads((folder / "training.json").read_text()),
            "metrics": json.loads((folder / "metrics.json").read_text()),
        }

    # -- internals -----------------------------------------------------------------------------
    def _manifest(self, folder: Path, version: str, created: datetime) -> bytes:
        return _json_bytes(
            {
                "version": version,
                "created": created.isoformat(),
                "feature_spec_hash": self.spec.hash,
                "files": {name: sha256_file(folder / name) for name in FILES},
            }
        )

    def _verified_manifest(self, folder: Path, version: str) -> dict[str, Any]:
        path = folder / MANIFEST
        if not path.is_file():
            raise ModelIntegrityError(f"version {version} has no manifest.json")
        manifest: dict[str, Any] = json.loads(path.read_text())
        files: dict[str, str] = manifest.get("files", {})
        if set(files) != set(FILES):
            raise ModelIntegrityError(
                f"version {version}: manifest lists {sorted(files)}, expected {sorted(FILES)}"
            )
        for name, expected in files.items():
            target = folder / name
            if not target.is_file():
                raise ModelIntegrityError(f"version {version}: {name} is missing")
            actual = sha256_file(target)
            if actual != expected:
                raise ModelIntegrityError(
                    f"version {version}: {name} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…"
                    " (the file was changed after the version was written)"
                )
        return manifest

    def _set_alias(self, aliases: dict[str, Any], name: str, version: str) -> None:
        aliases[name] = version
        aliases["history"].append({"alias": name, "version": version, "at": datetime.now(UTC).isoformat()})
        self._write_aliases(aliases)

    def _write_aliases(self, aliases: dict[str, Any]) -> None:
        _write_atomic(self.root / "aliases.json", _json_bytes(aliases))
