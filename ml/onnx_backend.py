"""ONNX Runtime inference for CPUs (``model.backend: onnx``), exported from the verified eager model.

On this project's 2-core reference machine ONNX Runtime runs the forward pass faster than eager
PyTorch (benchmarks/bench_model.py; numbers in docs/MODEL.md), and its outputs equal the eager
model's to within 1e-5 (tests/unit/test_predictor_onnx.py). The graph is exported in memory at load
time from the weights the registry has just verified (a few seconds, once per load), never read
from a cache a third party could change. Needs the packages ``onnx``, ``onnxscript`` and
``onnxruntime``; they are imported only when this backend is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import ConfigError
from ml.model.network import UnifiedPatchTST

INPUT, OUTPUT = "features", "outputs"
# The largest batch the exported graph accepts: 10 000 symbols is 20x the design's 500.
MAX_BATCH = 10_000


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs a warning per optional op library it does not find (torchvision …).
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: UnifiedPatchTST) -> bytes:
    """The model as a serialised ONNX graph with a dynamic batch dimension."""
    c = model.config
    example = torch.zeros(2, c.context, c.n_features)
    model = model.cpu().eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
            )
    except ImportError as exc:
        raise ConfigError(f"model.backend 'onnx' needs the packages onnx and onnxscript: {exc}") from None
    assert program is not None
    data: bytes = program.model_proto.SerializeToString()
    return data


class OnnxRunner:
    """One ONNX Runtime session on the CPU."""

    def __init__(self, graph: bytes, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError(f"model.backend 'onnx' needs the package onnxruntime: {exc}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: Any = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    @classmethod
    def from_model(cls, model: UnifiedPatchTST, threads: int = 0) -> OnnxRunner:
        return cls(export_onnx(model), threads)

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if x.shape[0] > MAX_BATCH:
            parts = [self(x[i : i + MAX_BATCH]) for i in range(0, x.shape[0], MAX_BATCH)]
            return np.concatenate(parts)
        out: npt.NDArray[np.float32] = self._session.run([OUTPUT], {INPUT: np.ascontiguousarray(x)})[0]
        return out
