"""The pipeline's view of the registry: champion look-up, scalers by version, hot model reload, and
the shadow challenger.

Every minute reads the ``champion`` alias once and passes the version to all its tasks; the
inference worker reloads only when that version differs from the one it holds, so a promotion
takes effect at the next minute without a restart.

**Shadow challenger** (``quality.shadow_enabled``, docs/SIGNAL_QUALITY.md): when the registry names a
``challenger``, the inference step also scores it on the minute's tensor (``predict_shadow``): one
extra forward pass, its signals stored under its own version and never traded. The server holds the
champion's and the challenger's predictors side by side (a promotion of the challenger therefore
needs no load at all). A new challenger is loaded in a background thread, so that its load (seconds
with the ONNX backend) never delays a champion's minute: minutes that start while it loads are
scored without it. A challenger that fails to load is not tried again for ``LOAD_RETRY_S`` (or until
the alias moves); each minute meanwhile reports why it was skipped.

**Scaling.** The feature tasks store the windows scaled with the *champion's* scaler. The challenger
has its own ``RobustScaler``; ``rescale`` maps one scaling onto the other exactly (both are affine per
feature): ``x = y * s_champion + c_champion``, then ``(x - c_challenger) / s_challenger``, clipped at
the challenger's bound. The one loss: a value the champion's scaler clipped (beyond its ``±clip``
scale units, data errors in practice) is known only to lie beyond that bound, so the challenger sees
that bound mapped onto its own scale (and clipped by its own bound), not its own clip of the true
value. Unclipped values reach the challenger as its own scaling would give them, within float32
rounding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from core.errors import PermanentError
from core.logging import get_logger
from core.settings import Settings
from ml.features import FeatureSpecMismatchError
from ml.outputs import ModelOutputs
from ml.predictor import Predictor
from ml.registry import Registry, RegistryError
from ml.scaling import RobustScaler

log = get_logger(__name__)

# A challenger that failed to load is tried again after this long (or as soon as the alias moves).
LOAD_RETRY_S = 600.0


class ChallengerUnavailableError(PermanentError):
    """The challenger cannot be scored (it failed to load, or its prediction failed)."""


@dataclass
class _ChallengerLoad:
    """One background load of a challenger version."""

    version: str
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    failed_at: float = 0.0


def rescale(
    tensor: npt.NDArray[np.float32], source: RobustScaler, target: RobustScaler
) -> npt.NDArray[np.float32]:
    """``rescale_tensor`` for a NumPy array (on the CPU); returns ``tensor`` itself when the two
    scalers are the same."""
    out = rescale_tensor(torch.from_numpy(tensor), source, target)
    return tensor if out.data_ptr() == tensor.ctypes.data else out.numpy()


def rescale_tensor(x: torch.Tensor, source: RobustScaler, target: RobustScaler) -> torch.Tensor:
    """Windows scaled by ``source`` as ``target`` scales them: one affine map per feature, then
    ``target``'s clip (the module's docstring says what happens to values ``source`` clipped), on
    ``x``'s own device (on a GPU the map costs well under a millisecond at 500 windows; NumPy on the
    CPU took 23 ms there). Returns ``x`` itself when the two scalers are the same."""
    if source.names != target.names or source.spec_hash != target.spec_hash:
        raise FeatureSpecMismatchError(
            f"cannot rescale: the scalers were fitted for feature specs {source.spec_hash[:12]}… and "
            f"{target.spec_hash[:12]}…"
        )
    if (
        source.clip == target.clip
        and np.array_equal(source.center, target.center)
        and np.array_equal(source.scale, target.scale)
    ):
        return x
    # The map's coefficients in float64, then float32: their rounding stays far below the tensor's.
    # A multiply, then an add (no fused multiply-add): the same roundings on every device.
    gain = torch.from_numpy((source.scale / target.scale).astype(np.float32)).to(x.device)
    offset = torch.from_numpy(((source.center - target.center) / target.scale).astype(np.float32))
    out = x * gain  # a new tensor: the champion's windows stay as they were
    out += offset.to(x.device)
    return out.clamp_(-target.clip, target.clip)


class RegistryModelServer:
    def __init__(self, settings: Settings, on_load: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        # Told the version after each model load (start, hot reload, a challenger): the worker counts them.
        self.on_load = on_load
        self.registry = Registry(settings.model.registry_dir)
        self._scalers: dict[str, RobustScaler] = {}
        # The champion's and the challenger's predictors, by version: at most these two are kept.
        self._predictors: dict[str, Predictor] = {}
        self._challenger_seen: str | None = None
        self._load: _ChallengerLoad | None = None
        self._lock = threading.Lock()

    # -- aliases --------------------------------------------------------------------------------
    def champion_version(self) -> str | None:
        value = self.registry.aliases().get("champion")
        return str(value) if value else None

    def challenger_version(self) -> str | None:
        value = self.registry.aliases().get("challenger")
        return str(value) if value else None

    # -- the champion ---------------------------------------------------------------------------
    def scaler(self, version: str) -> RobustScaler:
        with self._lock:
            held = self._predictors.get(version)
            if held is not None:
                return held.loaded.scaler
            if version not in self._scalers:
                # A full, verified load: the scaler is trusted only with its manifest and spec hash.
                self._scalers[version] = self.registry.load(version).scaler
            return self._scalers[version]

    def predictor(self, version: str) -> Predictor:
        """The predictor of ``version`` (the minute's champion), loaded now when not held; every other
        version but the challenger's (with shadow scoring on) is released."""
        challenger = self._challenger_to_keep()
        with self._lock:
            predictor = self._predictors.get(version)
            if predictor is None:
                predictor = Predictor.load(self.registry, version, self.settings)
                self._predictors[version] = predictor
                self._loaded(version)
            keep = {version, challenger}
            for old in [v for v in self._predictors if v not in keep]:
                del self._predictors[old]
            return predictor

    def _challenger_to_keep(self) -> str | None:
        """The challenger alias now (after a rollback, the champion just demoted stays held)."""
        if not self.settings.quality.shadow_enabled:
            return None
        try:
            return self.challenger_version()
        except RegistryError as exc:  # an unreadable aliases file must not stop the champion
            log.warning("challenger alias not read", error=str(exc))
            return self._challenger_seen

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs:
        predictor = self.predictor(version)
        outputs = predictor.predict(tensor)
        return ModelOutputs(predictor.version, outputs, predictor.temperature, predictor.loaded.schema)

    # -- the shadow challenger ------------------------------------------------------------------
    def predict_shadow(self, tensor: npt.NDArray[np.float32], champion_version: str) -> ModelOutputs | None:
        """The challenger's outputs for the minute's ``tensor`` (scaled with ``champion_version``'s
        scaler). None when there is nothing to score: no challenger, the champion itself, or a
        challenger still loading in the background. Raises ``ChallengerUnavailableError`` when the
        challenger failed to load or to predict."""
        version = self.challenger_version()
        with self._lock:
            self._challenger_seen = version
        if version is None or version == champion_version:
            return None
        predictor = self._challenger(version)
        if predictor is None:
            return None
        try:
            # One upload, then the map on the challenger's device (a GPU, in production).
            uploaded = torch.from_numpy(tensor).to(predictor.device)
            inputs = rescale_tensor(uploaded, self.scaler(champion_version), predictor.loaded.scaler)
            outputs = predictor.predict(inputs)
        except Exception as exc:  # the caller isolates it; the reason names the version
            raise ChallengerUnavailableError(
                f"challenger {version} failed to predict: {type(exc).__name__}: {exc}"
            ) from exc
        return ModelOutputs(predictor.version, outputs, predictor.temperature, predictor.loaded.schema)

    def wait_for_challenger(self, timeout: float) -> bool:
        """Wait until the challenger's background load (if one runs) ended; False on timeout."""
        with self._lock:
            load = self._load
        return True if load is None else load.done.wait(timeout)

    def _challenger(self, version: str) -> Predictor | None:
        """The held challenger, or None while its background load runs (started here when needed)."""
        with self._lock:
            held = self._predictors.get(version)
            if held is not None:
                return held
            load = self._load
            retry = (
                load is not None
                and load.error is not None
                and time.monotonic() - load.failed_at > LOAD_RETRY_S
            )
            if load is None or load.version != version or retry:
                load = _ChallengerLoad(version)
                self._load = load
                threading.Thread(
                    target=self._load_challenger, args=(load,), name="challenger-load", daemon=True
                ).start()
                return None
        if load.error is not None:
            raise ChallengerUnavailableError(f"challenger {version} failed to load: {load.error}")
        return None

    def _load_challenger(self, load: _ChallengerLoad) -> None:
        try:
            predictor = Predictor.load(self.registry, load.version, self.settings)
        except Exception as exc:  # noqa: BLE001  (any failure: a broken challenger never stops the champion)
            load.error = f"{type(exc).__name__}: {exc}"
            load.failed_at = time.monotonic()
            log.error("challenger not loaded", version=load.version, error=load.error)
        else:
            with self._lock:
                # Kept only while it is still the challenger seen last (the alias may have moved).
                if self._challenger_seen in (None, load.version):
                    self._predictors[load.version] = predictor
            self._loaded(load.version)
            log.info("challenger loaded", version=load.version, device=str(predictor.device))
        finally:
            load.done.set()

    def _loaded(self, version: str) -> None:
        if self.on_load is not None:
            self.on_load(version)

    # -- worker start ---------------------------------------------------------------------------
    def warm_up(self) -> str:
        """Load the champion, and the challenger when shadow scoring is on (a challenger that fails
        to load is reported, never raised: the champion serves regardless)."""
        version = self.champion_version()
        if version is None:
            return "no champion yet"
        predictor = self.predictor(version)
        description = f"{predictor.version} on {predictor.device}"
        challenger = self.challenger_version() if self.settings.quality.shadow_enabled else None
        if challenger is None or challenger == version:
            return description
        with self._lock:
            self._challenger_seen = challenger
        load = _ChallengerLoad(challenger)
        with self._lock:
            self._load = load
        self._load_challenger(load)
        if load.error is not None:
            return f"{description}; challenger {challenger} not loaded: {load.error}"
        return f"{description}; shadow challenger {challenger}"
