"""``inference`` queue (a dedicated solo worker, GPU when there is one): one batched forward pass
(``pipeline.stages.inference_stage``), and one more for the registry's challenger when there is one
(the shadow challenger: scored, stored and published, never traded). The worker holds both models,
loaded at its start; a new challenger loads in the background."""

from __future__ import annotations

from typing import Any

from pipeline.stages import inference_stage
from tasks.common import MINUTE_RETRY
from worker.app import app
from worker.runtime import get_runtime


@app.task(
    name="tasks.inference.predict_batch",
    # Pure function of stored windows: safe to acknowledge late and to run again.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=30,
    time_limit=40,
    **MINUTE_RETRY,
)
def predict_batch(
    chunk_results: list[list[dict[str, Any]]], minute: str, run: int, model_version: str
) -> dict[str, Any]:
    """Chord callback: ``chunk_results`` are the feature tasks' references, in chunk order."""
    return inference_stage(get_runtime(), chunk_results, minute, run, model_version)
