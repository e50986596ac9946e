"""UnifiedPatchTST speed on this machine: ``python -m benchmarks.bench_model [--threads N] [--quick]``.

Prints, for CPU inference (fp32, ``torch.inference_mode``) at batch 1, 50, 100 and 500, the median
forward time and the achieved GFLOP/s (model FLOPs counted by ``torch.utils.flop_counter``: matrix
products and convolutions, 2 per multiply-add), beside the GFLOP/s of a large fp32 matrix product
measured in the same run; the same for ONNX Runtime when it is installed; and training throughput
in samples/s (forward, backward and AdamW step at the default recipe's batch size, with and without
bf16 autocast). Target (DESIGN.md §8): batch 100 in at most 150 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ml.model import ModelConfig, build_model, count_parameters
from ml.training import TrainingRecipe

BATCHES = (1, 50, 100, 500)
TARGET_MS_BATCH_100 = 150.0


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def model_flops(model: torch.nn.Module, config: ModelConfig) -> int:
    """FLOPs of one sample's forward pass.

    Counted in training mode under ``no_grad``: in eval mode the encoder takes PyTorch's fused
    fast path, which the counter does not see (the same arithmetic, uncounted).
    """
    counter = FlopCounterMode(display=False)
    model.train()
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, config.context, config.n_features))
    finally:
        model.eval()
    return int(counter.get_total_flops())


def matmul_gflops(n: int, repeat: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = median_seconds(lambda: a @ b, repeat)
    return 2 * n**3 / seconds / 1e9


def training_throughput(batch: int, steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    config = TrainingRecipe().model
    model = build_model(config).train()
    if model.linear is not None:
        model.linear.requires_grad_(False)  # as training does: the linear path is fitted, not trained
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, config.context, config.n_features)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().square().mean().backward()
        opt.step()

    return batch / median_seconds(step, steps, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeat = 5 if args.quick else 15
    # The architecture the training recipes build and the registry serves (with the linear path).
    config = TrainingRecipe().model
    torch.manual_seed(0)
    model = build_model(config).eval()
    flops = model_flops(model, config)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"UnifiedPatchTST: {count_parameters(model):,} parameters, {flops / 1e6:.1f} MFLOP per sample")
    peak = matmul_gflops(2048, repeat)
    print(f"fp32 matmul 2048x2048x2048: {peak:.1f} GFLOP/s\n")

    rows: list[tuple[str, int, float]] = []
    for batch in BATCHES:
        x = torch.randn(batch, config.context, config.n_features)

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model(x)

        rows.append(("eager", batch, median_seconds(forward, repeat if batch < 500 else max(3, repeat // 3))))
    try:
        from ml.onnx_backend import OnnxRunner

        runner = OnnxRunner.from_model(model, args.threads)
        for batch in BATCHES:
            xn = (
                np.random.default_rng(0)
                .normal(size=(batch, config.context, config.n_features))
                .astype(np.float32)
            )

            def run_onnx(xn: np.ndarray = xn) -> None:
                runner(xn)

            rows.append(("onnxruntime", batch, median_seconds(run_onnx, repeat)))
    except (ImportError, RuntimeError, OSError) as exc:  # not installed, or the export failed
        print(f"(ONNX Runtime not measured: {exc})")

    print(f"{'backend':<12} {'batch':>5} {'median ms':>10} {'GFLOP/s':>8} {'% of matmul':>11}")
    for backend, batch, seconds in rows:
        rate = flops * batch / seconds / 1e9
        print(f"{backend:<12} {batch:>5} {seconds * 1e3:>10.1f} {rate:>8.1f} {100 * rate / peak:>10.0f}%")
    eager_100 = next(s for b_, n, s in rows if b_ == "eager" and n == 100) * 1e3
    verdict = "PASS" if eager_100 <= TARGET_MS_BATCH_100 else "FAIL"
    print(f"\nbatch 100 eager: {eager_100:.1f} ms (target <= {TARGET_MS_BATCH_100:.0f} ms): {verdict}")

    batch = TrainingRecipe().batch_size
    steps = 3 if args.quick else 6
    for bf16 in (False, True):
        rate = training_throughput(batch, steps, bf16)
        label = "bf16 autocast" if bf16 else "fp32"
        print(
            f"training, batch {batch}, {label}: {rate:.0f} samples/s ({3 * flops * rate / 1e9:.1f} GFLOP/s)"
        )


if __name__ == "__main__":
    main()
