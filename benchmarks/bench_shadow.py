"""Cost of the shadow challenger: ``python -m benchmarks.bench_shadow [--symbols 500] [--rounds 12]``.

Measures the minute's inference stage (``pipeline.stages.inference_stage``, what the inference task
runs: the ledger's stage mark, one ``MGET`` of every feature window from Redis, the batched forward
pass, decoding, the JSON-ready rows) at ``--symbols`` symbols on ``--device`` (CPU by default),
with and without a challenger in the registry (``quality.shadow_enabled`` on and off, the same
process, server and windows), in alternating order (off-on, then on-off) so that a drift of the
shared machine weighs on both alike.
Also the serialisation of the task's result (Celery's JSON encoding of the returned rows, which
the shadow's rows make longer). Champion and challenger have the architecture the training recipes
build and scalers of their own, so the challenger's inputs are rescaled as in production; weights
are untrained (timing does not depend on them).

Prints n, min, median, the percentiles the sample supports and max of each part, the shadow's added
share of the stage (median of the per-round ratios ``on / off - 1``) and the target (issue 15): the
shadow forward pass may add at most 60 % to the inference stage at 500 symbols.

Windows live in the benchmark's own Redis database (``--redis-url``, default
``$MLSIG_BENCH_REDIS_URL`` or db 14; never db 0), emptied before and after if it is empty or a
benchmark's; ``--store memory`` keeps them in process (the embedded run) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from benchmarks.common import add_redis_option, claim_redis, percentiles_for, sample_stats
from core.logging import configure_logging
from core.settings import Settings
from ml.features import FEATURE_SPEC
from ml.registry import Registry
from ml.serving import RegistryModelServer
from ml.training import TrainingRecipe
from pipeline.ledger import RUNNING
from pipeline.stages import inference_stage
from pipeline.window_store import RedisWindowStore, window_key
from tests.support.models import register_challenger, shifted_scaler
from worker.embedded import build_embedded

TARGET_ADDED = 0.60
CHUNK = 50  # symbols per feature task: the default ml_integration.batch_size


def registry_with_challenger(root: Path) -> Registry:
    from ml.model.network import build_model

    registry = Registry(root)
    torch.manual_seed(0)
    registry.register(build_model(TrainingRecipe().model), shifted_scaler(7), {"note": "bench champion"}, {})
    torch.manual_seed(1)
    register_challenger(registry, model=build_model(TrainingRecipe().model), scaler=shifted_scaler(1))
    return registry


def chunks_of(symbols: list[str], run_id: str) -> list[list[dict[str, Any]]]:
    refs = [
        {"symbol": s, "ok": True, "key": window_key(run_id, s), "reason": None}
        | {"bar_end_ms": 0, "close": 100.0}
        for s in symbols
    ]
    return [refs[i : i + CHUNK] for i in range(0, len(refs), CHUNK)]


def line(name: str, samples: list[float], columns: list[str]) -> str:
    stats = sample_stats(samples)
    cells = "".join(f"{stats[c] * 1000:>10.0f}" if c in stats else f"{'-':>10}" for c in columns)
    return f"  {name:<34}{int(stats['n']):>4}{cells}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=12, help="rounds of (off, on) pairs")
    parser.add_argument("--store", choices=("redis", "memory"), default="redis")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the model server's device")
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING", False)
    if args.threads:
        torch.set_num_threads(args.threads)

    with (
        tempfile.TemporaryDirectory() as tmp,
        claim_redis(args.redis_url) if args.store == "redis" else nullcontext(None) as redis_url,
    ):
        settings = Settings(
            data_dir=Path(tmp),
            database_url=f"sqlite:///{tmp}/bench.db",
            model={"registry_dir": Path(tmp) / "models", "device": args.device},
        )
        from data import db

        db.upgrade(settings.database_url)
        registry = registry_with_challenger(settings.model.registry_dir)
        champion = registry.resolve("champion")
        rt = build_embedded(settings)
        if redis_url is not None:
            rt.windows = RedisWindowStore(redis.Redis.from_url(redis_url))
        # The server keeps its own settings (shadow on: it holds both models throughout); the stage's
        # settings switch the shadow pass on and off.
        server = RegistryModelServer(settings.model_copy(deep=True))
        print(f"model server: {server.warm_up()}")
        rt.models = server

        symbols = [f"SYM{i:04d}/USDT:USDT" for i in range(args.symbols)]
        rng = np.random.default_rng(0)
        shape = (FEATURE_SPEC.context, FEATURE_SPEC.n_features)
        # Windows as a feature task leaves them: scaled by the champion's scaler, so within its clip.
        scaler = server.scaler(champion)
        scaled = scaler.transform(rng.normal(size=(args.symbols, *shape)) * scaler.scale + scaler.center)
        windows = {window_key("bench", s): scaled[i] for i, s in enumerate(symbols)}
        rt.windows.put_many(windows, ttl_seconds=3600)
        chunks = chunks_of(symbols, "bench")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
            f"device {args.device}{f' ({torch.cuda.get_device_name()})' if args.device == 'cuda' else ''}; "
            f"{args.symbols} symbols in {len(chunks)} chunks; windows in {args.store}"
            + (f" ({redis_url})" if redis_url else "")
        )

        minute = datetime(2026, 1, 1, tzinfo=UTC)
        samples: dict[str, list[float]] = {k: [] for k in ("off", "on", "json_off", "json_on")}
        parts: dict[str, list[float]] = {
            k: [] for k in ("fetch", "forward", "shadow_forward", "shadow_wait", "shadow_decode")
        }
        ratios: list[float] = []

        def one(shadow: bool) -> float:
            nonlocal minute
            minute += timedelta(minutes=1)
            settings.quality.shadow_enabled = shadow
            run = rt.ledger.claim(minute, status=RUNNING, model_version=champion, symbols_asked=args.symbols)
            assert run is not None
            iso = minute.strftime("%Y-%m-%dT%H:%MZ")
            began = time.perf_counter()
            result = inference_stage(rt, chunks, iso, run, champion)
            elapsed = time.perf_counter() - began
            began = time.perf_counter()
            json.dumps(result)
            encoded = time.perf_counter() - began
            if len(result["signals"]) != args.symbols or ("version" in result.get("shadow", {})) != shadow:
                why = result.get("shadow", {}).get("error")
                raise SystemExit(f"the stage did not score every symbol (shadow: {why})")
            key = "on" if shadow else "off"
            samples[key].append(elapsed)
            samples[f"json_{key}"].append(encoded)
            for name in parts:
                if name in result["timings"]:
                    parts[name].append(float(result["timings"][name]))
            return elapsed

        one(False), one(True)  # warm-up: first calls allocate
        for k in (*samples, *parts):
            (samples if k in samples else parts)[k].clear()
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            times = {shadow: one(shadow) for shadow in order}
            ratios.append(times[True] / times[False] - 1.0)

    columns = ["min", "median", *(f"p{q}" for q in percentiles_for(args.rounds)), "max"]
    print(
        f"\ninference stage at {args.symbols} symbols, {args.device.upper()} "
        f"({args.rounds} rounds of off/on, alternating)"
    )
    print(f"  {'':<34}{'n':>4}" + "".join(f"{c + ' ms':>10}" for c in columns))
    print(line("stage, no challenger", samples["off"], columns))
    print(line("stage, with the shadow challenger", samples["on"], columns))
    print(line("  window fetch", parts["fetch"], columns))
    print(line("  champion forward", parts["forward"], columns))
    print(line("  shadow forward (own thread)", parts["shadow_forward"], columns))
    print(line("  shadow wait after champion rows", parts["shadow_wait"], columns))
    print(line("  shadow decode and rows", parts["shadow_decode"], columns))
    print(line("result JSON, no challenger", samples["json_off"], columns))
    print(line("result JSON, with the challenger", samples["json_on"], columns))
    added = statistics.median(ratios)
    by_medians = statistics.median(samples["on"]) / statistics.median(samples["off"]) - 1.0
    with_json = (statistics.median(samples["on"]) + statistics.median(samples["json_on"])) / (
        statistics.median(samples["off"]) + statistics.median(samples["json_off"])
    ) - 1.0
    print(
        f"\nadded by the shadow challenger: {100 * added:+.0f} % (median of {len(ratios)} paired rounds; "
        f"{100 * by_medians:+.0f} % between the medians; {100 * with_json:+.0f} % with the result's JSON)"
    )
    verdict = "PASS" if added <= TARGET_ADDED else "FAIL"
    print(f"target: at most +{100 * TARGET_ADDED:.0f} % at 500 symbols: {verdict}")
    print(
        f"process peak RSS (VmHWM): {peak_rss_mib():.0f} MiB (both models loaded on {args.device}, the "
        "windows in process: an upper bound of an inference worker's host memory)"
    )


def peak_rss_mib() -> float:
    """The process's resident-memory high-water mark (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    main()
