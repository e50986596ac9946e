"""The model registry: one folder per version holding everything needed to use it, and two aliases.

Layout under ``settings.model.registry_dir``::

    versions/<version_id>/
        weights.pt           state_dict (torch.save), loaded with weights_only=True
        config.json          ModelConfig: the only source of the architecture
        scaler.json          RobustScaler statistics
        feature_spec.json    hash, version and ordered names of the feature spec it was trained on
        output_schema.json   the meaning of the 20 outputs (ml/model/schema.py)
        training.json        data range, symbols, split, recipe, seed, loss normalisers, history
        metrics.json         held-out evaluation (rewritten by ``evaluate``)
        baselines.npz        optional: the linear baselines of ml/baselines.py (plain arrays, no
                             pickles), fitted on the version's training rows; older versions lack it
        feature_bins.npz     optional: the training distribution of every feature as quantile bins
                             (ml/drift.py), read alone by the drift pass (``feature_bins``); older
                             versions lack it
        manifest.json        sha256 of every file above, and its own digest
    aliases.json             {"champion": id, "challenger": id, "previous_champions": [...], "history": [...]}

A version is written to a temporary folder and renamed into place, and ``aliases.json`` is replaced
atomically under a lock file, so readers never see half a version or half an alias file. Loading
verifies every digest and the feature-spec hash before anything is deserialised.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import PermanentError
from ml.features import FEATURE_SPEC, FeatureSpec, FeatureSpecMismatchError
from ml.model.config import ModelConfig
from ml.model.network import UnifiedPatchTST, build_model
from ml.model.schema import OutputSchema
from ml.scaling import RobustScaler

MANIFEST = "manifest.json"
FILES: tuple[str, ...] = (
    "weights.pt",
    "config.json",
    "scaler.json",
    "feature_spec.json",
    "output_schema.json",
    "training.json",
    "metrics.json",
)
# Files a version may have; when present they are listed in, and verified against, the manifest.
OPTIONAL_FILES: tuple[str, ...] = ("baselines.npz", "feature_bins.npz")
ALIASES = ("champion", "challenger")
MANIFEST_FORMAT = "mlsignals.model_manifest"


class RegistryError(PermanentError):
    """The registry cannot do what was asked (unknown version, nothing to roll back to …)."""


class ModelIntegrityError(PermanentError):
    """A stored version's files do not match its manifest, or are unreadable."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    model: UnifiedPatchTST
    config: ModelConfig
    scaler: RobustScaler
    schema: OutputSchema
    training: dict[str, Any]
    metrics: dict[str, Any]
    feature_spec_hash: str
    # baselines.npz's arrays (``ml.baselines.Baselines.from_arrays``); None for a version without it.
    baselines: dict[str, npt.NDArray[Any]] | None = None

    @property
    def temperature(self) -> float:
        return self.model.temperature


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created: str
    aliases: tuple[str, ...]
    training: dict[str, Any]
    metrics: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _json(doc: Any) -> str:
    return json.dumps(finite_json(doc), indent=1, sort_keys=True, allow_nan=False) + "\n"


def _now() -> datetime:
    return datetime.now(UTC)


class Registry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.aliases_path = self.root / "aliases.json"

    # -- writing ----------------------------------------------------------------------------------
    def register(
        self,
        model: UnifiedPatchTST,
        scaler: RobustScaler,
        training: Mapping[str, Any],
        metrics: Mapping[str, Any],
        *,
        spec: FeatureSpec = FEATURE_SPEC,
        now: datetime | None = None,
        baselines: Mapping[str, npt.NDArray[Any]] | None = None,
        feature_bins: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> tuple[str, str]:
        """Store a new version; returns ``(version_id, alias)`` where alias is ``champion`` for the
        first version of an empty registry and ``challenger`` otherwise. ``baselines`` (arrays of
        ``ml.baselines.Baselines.to_arrays``) are stored as ``baselines.npz`` and ``feature_bins``
        (``ml.drift.FeatureBins.to_arrays``) as ``feature_bins.npz`` when given."""
        spec.check_hash(scaler.spec_hash, "the scaler")
        config = model.config
        buffer = io.BytesIO()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, buffer)
        weights = buffer.getvalue()
        stamp = (now or _now()).strftime("%Y%m%dT%H%M%SZ")
        version = f"{stamp}-{hashlib.sha256(weights).hexdigest()[:8]}"
        contents = {
            "weights.pt": weights,
            "config.json": config.to_json().encode() + b"\n",
            "scaler.json": scaler.to_json().encode() + b"\n",
            "feature_spec.json": _json(
                {
                    "hash": spec.hash,
                    "version": spec.version,
                    "context": spec.context,
                    "names": list(spec.names),
                }
            ).encode(),
            "output_schema.json": OutputSchema.from_config(config).to_json().encode() + b"\n",
            "training.json": _json(dict(training)).encode(),
            "metrics.json": _json(dict(metrics)).encode(),
        }
        if baselines is not None:
            contents["baselines.npz"] = _npz(baselines)
        if feature_bins is not None:
            contents["feature_bins.npz"] = _npz(feature_bins)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        final = self.versions_dir / version
        if final.exists():
            raise RegistryError(f"version {version} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.versions_dir))
        try:
            for name, data in contents.items():
                (tmp / name).write_bytes(data)
            self._write_manifest(tmp, version, (now or _now()).isoformat(), tuple(contents))
            # mkdtemp creates 0700: the trainer and the inference workers may be different users
            # sharing the registry volume, and a version is read-only data anyway.
            tmp.chmod(0o755)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._locked_aliases() as aliases:
            alias = "challenger" if aliases.get("champion") else "champion"
            aliases[alias] = version
            self._event(aliases, "register", version, alias=alias)
        return version, alias

    def _write_manifest(
        self, folder: Path, version: str, created: str, names: tuple[str, ...] = FILES
    ) -> None:
        doc: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "created": created,
            "files": {name: sha256_file(folder / name) for name in names},
        }
        doc["manifest_sha256"] = hashlib.sha256(_canonical(doc)).hexdigest()
        _atomic_write(folder / MANIFEST, _json(doc))

    def update_metrics(self, ref: str, metrics: Mapping[str, Any]) -> str:
        """Replace a version's ``metrics.json`` and re-sign its manifest.

        The version is verified first, so a tampered version is refused rather than re-signed.
        """
        version = self.resolve(ref)
        folder = self._folder(version)
        manifest = self.verify(version)
        _atomic_write(folder / "metrics.json", _json(dict(metrics)))
        self._write_manifest(folder, version, str(manifest["created"]), tuple(manifest["files"]))
        return version

    # -- aliases ----------------------------------------------------------------------------------
    def promote(self, ref: str) -> str:
        """Make a version the champion; the champion it replaces can be restored with ``rollback``."""
        version = self.resolve(ref)
        self.verify(version)
        with self._locked_aliases() as aliases:
            current = aliases.get("champion")
            if current == version:
                raise RegistryError(f"{version} is already the champion")
            if current:
                aliases.setdefault("previous_champions", []).append(current)
            aliases["champion"] = version
            if aliases.get("challenger") == version:
                aliases["challenger"] = None
            self._event(aliases, "promote", version, replaced=current)
        return version

    def rollback(self) -> str:
        """Return ``champion`` to the previous champion; the demoted one becomes the challenger."""
        with self._locked_aliases() as aliases:
            stack = aliases.get("previous_champions") or []
            if not stack:
                raise RegistryError("no previous champion to roll back to")
            previous = stack.pop()
            self.verify(previous)
            demoted = aliases.get("champion")
            aliases["previous_champions"] = stack
            aliases["champion"] = previous
            aliases["challenger"] = demoted
            self._event(aliases, "rollback", previous, replaced=demoted)
        return str(previous)

    def aliases(self) -> dict[str, Any]:
        return self._read_aliases()

    def resolve(self, ref: str) -> str:
        """A version id, or the version an alias points to; cheap enough to poll every minute."""
        if ref in ALIASES:
            version = self._read_aliases().get(ref)
            if not version:
                raise RegistryError(f"no {ref} in the model registry at {self.root}")
            return str(version)
        if not (self.versions_dir / ref).is_dir():
            raise RegistryError(f"unknown model version {ref!r} in {self.root}")
        return ref

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def info(self, ref: str) -> VersionInfo:
        version = self.resolve(ref)
        folder = self._folder(version)
        aliases = self._read_aliases()
        names = tuple(a for a in ALIASES if aliases.get(a) == version)
        manifest = _read_json(folder / MANIFEST, version)
        return VersionInfo(
            version=version,
            created=str(manifest.get("created", "")),
            aliases=names,
            training=_read_json(folder / "training.json", version),
            metrics=_read_json(folder / "metrics.json", version),
        )

    def model_config(self, ref: str) -> ModelConfig:
        """A version's architecture and label rules (``config.json``) without loading its weights."""
        version = self.resolve(ref)
        return ModelConfig.model_validate(_read_json(self._folder(version) / "config.json", version))

    # -- loading ----------------------------------------------------------------------------------
    def verify(self, ref: str) -> dict[str, Any]:
        """Check the manifest and every file's sha256; returns the manifest."""
        manifest, _ = self._read_verified(self.resolve(ref))
        return manifest

    def feature_bins(self, ref: str) -> dict[str, npt.NDArray[Any]] | None:
        """``feature_bins.npz``'s arrays (``ml.drift.FeatureBins.from_arrays``) of a version, read alone:
        the manifest's own digest and the file's are checked, no weights are loaded. None for a
        version stored without it."""
        version = self.resolve(ref)
        folder = self._folder(version)
        files = self._checked_manifest(version)[0]["files"]
        name = "feature_bins.npz"
        if name not in files:
            return None
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelIntegrityError(f"model {version}: cannot read {name}: {exc}") from None
        _check_digest(version, name, data, str(files[name]))
        return _load_npz(data, version, name)

    def _checked_manifest(self, version: str) -> tuple[dict[str, Any], str | None]:
        """The manifest (without its own digest, which is returned beside it), checked against that
        digest and for naming this version and only known files."""
        folder = self._folder(version)
        manifest = _read_json(folder / MANIFEST, version)
        claimed = manifest.pop("manifest_sha256", None)
        if claimed != hashlib.sha256(_canonical(manifest)).hexdigest():
            raise ModelIntegrityError(
                f"model {version}: manifest.json was modified (its own digest does not match)"
            )
        files = manifest.get("files")
        if (
            manifest.get("version") != version
            or not isinstance(files, dict)
            or not set(FILES) <= set(files) <= set(FILES) | set(OPTIONAL_FILES)
        ):
            raise ModelIntegrityError(
                f"model {version}: manifest.json does not describe this version's files"
            )
        return manifest, claimed

    def _read_verified(self, version: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The manifest and the bytes of every file, checked against it. Callers deserialise these
        very bytes, so a file swapped after the check cannot slip through."""
        folder = self._folder(version)
        manifest, claimed = self._checked_manifest(version)
        files = manifest["files"]
        # The files the manifest lists: every required one, and the optional ones it signed.
        expected = set(files)
        present = {p.name for p in folder.iterdir()} - {MANIFEST}
        if present != expected:
            extra, missing = sorted(present - expected), sorted(expected - present)
            raise ModelIntegrityError(
                f"model {version}: unexpected files {extra}, missing files {missing} in {folder}"
            )
        contents: dict[str, bytes] = {}
        for name in (*FILES, *(n for n in OPTIONAL_FILES if n in expected)):
            data = (folder / name).read_bytes()
            _check_digest(version, name, data, str(files[name]))
            contents[name] = data
        manifest["manifest_sha256"] = claimed
        return manifest, contents

    def load(self, ref: str, *, spec: FeatureSpec = FEATURE_SPEC, map_location: str = "cpu") -> LoadedModel:
        """Verify and load a version; the model is in eval mode on ``map_location``."""
        version = self.resolve(ref)
        _, files = self._read_verified(version)
        docs = {name: _parse_json(files[name], name, version) for name in FILES if name.endswith(".json")}
        feature_doc = docs["feature_spec.json"]
        if feature_doc.get("hash") != spec.hash:
            raise FeatureSpecMismatchError(
                f"model {version} was trained on feature spec {str(feature_doc.get('hash'))[:12]}… "
                f"(version {feature_doc.get('version')}), this engine computes {spec.hash[:12]}… "
                f"(version {spec.version}); train a new model (`mlsignals model train`)"
            )
        try:
            config = ModelConfig.model_validate(docs["config.json"])
            schema = OutputSchema.from_json(files["output_schema.json"].decode())
            scaler = RobustScaler.from_dict(docs["scaler.json"], spec=spec)
        except FeatureSpecMismatchError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"model {version}: unreadable artefact: {exc}") from None
        if schema != OutputSchema.from_config(config):
            raise ModelIntegrityError(f"model {version}: output_schema.json disagrees with config.json")
        if config.n_features != spec.n_features or config.context != spec.context:
            raise FeatureSpecMismatchError(
                f"model {version} expects {config.context}x{config.n_features} inputs, the feature spec "
                f"gives {spec.context}x{spec.n_features}"
            )
        model = build_model(config)
        try:
            state = torch.load(io.BytesIO(files["weights.pt"]), map_location=map_location, weights_only=True)
            # Versions stored before per-horizon calibration: their horizons' temperatures are 1.
            state.setdefault("horizon_log_temperature", torch.zeros(config.n_horizons))
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - torch's loaders document no error types: bad bytes
            # raise EOFError, UnpicklingError, RuntimeError, KeyError, struct.error, UnicodeDecodeError
            # and more; a refused global, different shapes or missing keys too. All mean a bad file,
            # and none is swallowed: each becomes a ModelIntegrityError.
            raise ModelIntegrityError(f"model {version}: weights.pt cannot be loaded: {exc}") from None
        model.eval()
        baselines = _load_npz(files["baselines.npz"], version) if "baselines.npz" in files else None
        return LoadedModel(
            version=version,
            model=model,
            config=config,
            scaler=scaler,
            schema=schema,
            training=docs["training.json"],
            metrics=docs["metrics.json"],
            feature_spec_hash=spec.hash,
            baselines=baselines,
        )

    # -- internals --------------------------------------------------------------------------------
    def _folder(self, version: str) -> Path:
        folder = self.versions_dir / version
        if not folder.is_dir():
            raise RegistryError(f"unknown model version {version!r} in {self.root}")
        return folder

    def _read_aliases(self) -> dict[str, Any]:
        if not self.aliases_path.is_file():
            return {"champion": None, "challenger": None, "previous_champions": [], "history": []}
        try:
            doc = json.loads(self.aliases_path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read {self.aliases_path}: {exc}") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{self.aliases_path} is not a JSON object")
        return doc

    @contextlib.contextmanager
    def _locked_aliases(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of ``aliases.json`` under an exclusive lock; written atomically on success."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".aliases.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                aliases = self._read_aliases()
                yield aliases
                _atomic_write(self.aliases_path, _json(aliases))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _event(aliases: dict[str, Any], action: str, version: str, **extra: Any) -> None:
        aliases.setdefault("history", []).append(
            {"at": _now().isoformat(timespec="seconds"), "action": action, "version": version, **extra}
        )


def _npz(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _check_digest(version: str, name: str, data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelIntegrityError(
            f"model {version}: {name} does not match its manifest digest "
            f"(expected {expected[:12]}…, found {actual[:12]}…); the file was changed"
        )


def _load_npz(data: bytes, version: str, name: str = "baselines.npz") -> dict[str, npt.NDArray[Any]]:
    """An ``.npz`` of plain arrays; object arrays (pickles) are refused."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelIntegrityError(f"model {version}: {name} cannot be loaded: {exc}") from None


def _parse_json(data: bytes, name: str, version: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ModelIntegrityError(f"model {version}: cannot parse {name}: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelIntegrityError(f"model {version}: {name} is not a JSON object")
    return doc


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def _read_json(path: Path, version: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"model {version}: cannot read {path.name}: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelIntegrityError(f"model {version}: {path.name} is not a JSON object")
    return doc


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600; the file replaces a readable one and must stay readable to workers.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def open_registry(registry_dir: Path | str) -> Registry:
    return Registry(registry_dir)
