"""The ONNX Runtime backend gives the eager model's outputs within 1e-5 (absolute, float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.settings import Settings
from ml.predictor import Predictor
from tests.support.model_fixtures import make_registry

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Outputs are O(1) (tanh, logits, softplus); the two runtimes order float32 sums differently, which
# leaves differences of about 1e-6. 1e-5 is the stated tolerance.
TOLERANCE = 1e-5


@pytest.mark.parametrize("linear_path", [False, True], ids=["transformer", "with-linear-path"])
def test_onnx_outputs_equal_eager_outputs(tmp_path: Path, linear_path: bool) -> None:
    registry, _ = make_registry(tmp_path, 2, linear_path)
    eager = Predictor.load(registry, "champion", Settings(model={"registry_dir": tmp_path, "device": "cpu"}))
    onnx = Predictor.load(
        registry, "champion", Settings(model={"registry_dir": tmp_path, "device": "cpu", "backend": "onnx"})
    )
    assert onnx.backend == "onnx"
    rng = np.random.default_rng(0)
    for batch in (1, 7, 64):
        x = rng.normal(size=(batch, 96, 240)).astype(np.float32)
        np.testing.assert_allclose(onnx.predict(x), eager.predict(x), rtol=0, atol=TOLERANCE)
    # Hot reload re-exports the newly promoted version.
    registry.promote("challenger")
    assert onnx.refresh_if_changed()
    assert eager.refresh_if_changed()
    x = rng.normal(size=(5, 96, 240)).astype(np.float32)
    np.testing.assert_allclose(onnx.predict(x), eager.predict(x), rtol=0, atol=TOLERANCE)
