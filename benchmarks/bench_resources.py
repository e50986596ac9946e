"""Memory and CPU of each worker process tree while it serves real minutes: the figures behind the
Kubernetes requests and limits (deploy/k8s, docs/KUBERNETES.md).

Run: ``.venv/bin/python -m benchmarks.bench_resources [--symbols 500] [--minutes 5]``.
The rig is bench_pipeline's: simulated history in a scratch PostgreSQL schema, an untrained model of
the default size, the benchmark's own Redis database, one Celery worker process per queue started
exactly as deployed (``worker_command(queue)``; the features worker with ``--concurrency 1``, plus a
second one, as bench_pipeline does on 2 cores) and the metrics exporter beside them. It replays one
untimed warm-up minute, then ``--minutes`` minutes back to back.

A sampler thread reads /proc (psutil is not a dependency) every ``--sample-ms`` (100 ms) for each
worker's process tree (the worker and its pool children): RSS summed over the tree; every tenth
sample also PSS (``smaps_rollup``: shared pages split between the processes that map them, which is
closer to what the pod's cgroup is charged than the RSS sum of a forked pool); CPU as user+system
ticks of the tree's live processes plus what the root reaped. Printed per worker:

* RSS after start (idle, every process ready) and the peak over the whole run (start included);
* peak PSS, and the sum of the processes' kernel high-water marks (VmHWM: a bound no sample misses);
* CPU seconds per replayed minute (deployed, one minute a minute: that / 60 s is the average cores),
  and the peak cores over any 1 s window during the timed minutes (the burst a limit must allow).

On a 2-core machine shared with other work the CPU figures are upper bounds of a quiet node's; the
inference worker runs the model on the CPU here (the deployed one uses the GPU: less CPU, and the
CUDA context adds host memory, see docs/KUBERNETES.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from benchmarks.bench_pipeline import ExporterBeside, worker_env
from benchmarks.common import add_redis_option, claim_redis, load_history, replay_minute, scratch_postgres
from core.logging import configure_logging
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.sources.simulator import SimulatedMarket
from tests.support.models import untrained_registry
from tests.support.workers import celery_client, running_fleet, wait_for_workers
from worker.queues import Queue

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def tree(root: int, parent_of: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, ppid in parent_of.items():
        children[ppid].append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_uss_bytes(pid: int) -> tuple[int, int]:
    """(PSS, USS): the proportional share of the pages, and the pages only this process maps."""
    pss = uss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
        elif line.startswith(("Private_Clean:", "Private_Dirty:")):
            uss += int(line.split()[1]) * 1024
    return pss, uss


def cpu_ticks(pid: int, root: bool) -> int:
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12])  # utime, stime
    if root:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime: children it reaped
    return ticks


# ------------------------------------------------------------------------------------------ sampler


@dataclass
class Series:
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    pss_peak: int = 0
    hwm_sum: int = 0  # the largest sum of VmHWM over the tree seen (each process's own peak)
    child_uss_peak: int = 0  # the largest USS of a pool child (prefork): the cost of one more child
    procs: int = 0


class Sampler:
    """Samples the process trees of ``roots`` (label -> pid) until stopped."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.roots: dict[str, int] = {}
        self.series: dict[str, Series] = defaultdict(Series)
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, label: str, pid: int) -> None:
        with self._lock:
            self.roots[label] = pid

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            now = time.monotonic()
            parent_of = parents()
            with self._lock:
                roots = dict(self.roots)
            for label, root in roots.items():
                try:
                    self._sample(self.series[label], root, parent_of, now, deep=n % 10 == 0)
                except (OSError, ValueError, IndexError):
                    continue  # the process ended between the listing and the read
            n += 1
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - now)))

    @staticmethod
    def _sample(s: Series, root: int, parent_of: dict[int, int], now: float, deep: bool) -> None:
        pids = tree(root, parent_of)
        rss = cpu = 0
        for pid in pids:
            try:
                rss += rss_bytes(pid)
                cpu += cpu_ticks(pid, pid == root)
            except (OSError, IndexError, ValueError):
                if pid == root:
                    raise
        s.times.append(now)
        s.rss.append(rss)
        s.cpu_s.append(cpu / TICK)
        s.procs = max(s.procs, len(pids))
        if deep:
            pss = hwm = 0
            for pid in pids:
                try:
                    p, u = pss_uss_bytes(pid)
                    pss += p
                    hwm += status_kib(pid, "VmHWM") * 1024
                    if pid != root:
                        s.child_uss_peak = max(s.child_uss_peak, u)
                except (OSError, ValueError):
                    continue
            s.pss_peak = max(s.pss_peak, pss)
            s.hwm_sum = max(s.hwm_sum, hwm)


def value_at(s: Series, t: float, values: list[float] | list[int]) -> float:
    """The newest sample at or before ``t`` (the first one when none is)."""
    best = values[0]
    for when, v in zip(s.times, values, strict=True):
        if when > t:
            break
        best = v
    return float(best)


def peak_cores(s: Series, start: float, end: float, window_s: float = 1.0) -> float:
    points = [(t, c) for t, c in zip(s.times, s.cpu_s, strict=True) if start <= t <= end]
    best, j = 0.0, 0
    for i in range(len(points)):
        while j < i and points[i][0] - points[j][0] > window_s:
            j += 1
        # the widest window ending at i that is at most window_s long, at least half of it
        span = points[i][0] - points[j][0]
        if span >= window_s / 2:
            best = max(best, (points[i][1] - points[j][1]) / span)
    return best


# ----------------------------------------------------------------------------------------- the run


def replay_sampled(
    env: dict[str, str], tmp: Path, engine: Engine, first: int, minutes: int, sampler: Sampler
) -> int:
    """bench_pipeline.replay with the sampler on the fleet: returns the minutes that completed."""
    from pipeline.ledger import RunLedger
    from tasks.common import minute_dt

    client = celery_client(env, "bench-resources")
    with running_fleet(env, tmp) as fleet:
        fleet.start(Queue.FEATURES, "--concurrency", "1")
        counts: dict[str, int] = defaultdict(int)
        for w in fleet.started:
            counts[w.queue.value] += 1
            label = (
                w.queue.value if counts[w.queue.value] == 1 else f"{w.queue.value}-{counts[w.queue.value]}"
            )
            sampler.add(label, w.process.pid)
        sampler.start()
        wait_for_workers(client, fleet)
        sampler.mark("ready")
        time.sleep(1.0)  # a few idle samples after every worker answered (measurement, not sync)
        sampler.mark("idle")
        for i in range(-1, minutes):
            if i == 0:
                sampler.mark("timed_start")
            minute_ms = first + i * MINUTE_MS
            replay_minute(client, minute_ms)
        sampler.mark("timed_end")
        time.sleep(3 * sampler.interval_s)  # the last samples of the timed window
        sampler.stop()
        ledger = RunLedger(engine)
        runs = [ledger.get(minute_dt(iso_minute(first + i * MINUTE_MS))) for i in range(minutes)]
    client.close()
    return sum(1 for r in runs if r is not None and r.status == "done")


def report(sampler: Sampler, minutes: int, done: int, title: str) -> None:
    start, end = sampler.marks["timed_start"], sampler.marks["timed_end"]
    wall = end - start
    print(
        f"\n{title}: {done} of {minutes} minutes done, {wall:.1f} s for the timed minutes "
        f"({wall / max(minutes, 1):.2f} s each)"
    )
    header = (
        "worker",
        "procs",
        "idle RSS",
        "peak RSS",
        "peak PSS",
        "sum HWM",
        "child USS",
        "CPU s/min",
        "avg cores*",
        "peak cores",
    )
    print("  " + "".join(f"{h:>12}" if i else f"{h:<12}" for i, h in enumerate(header)))
    for label in sorted(sampler.series):
        s = sampler.series[label]
        if not s.times:
            continue
        idle = value_at(s, sampler.marks["idle"], s.rss)
        cpu = value_at(s, end, s.cpu_s) - value_at(s, start, s.cpu_s)
        per_minute = cpu / max(minutes, 1)
        cells = [
            str(s.procs),
            f"{idle / MIB:.0f} MiB",
            f"{max(s.rss) / MIB:.0f} MiB",
            f"{s.pss_peak / MIB:.0f} MiB",
            f"{s.hwm_sum / MIB:.0f} MiB",
            f"{s.child_uss_peak / MIB:.0f} MiB" if s.procs > 1 else "-",
            f"{per_minute:.2f}",
            f"{per_minute / 60:.3f}",
            f"{peak_cores(s, start, end):.2f}",
        ]
        print(f"  {label:<12}" + "".join(f"{c:>12}" for c in cells))
    print(
        "  * CPU s per minute / 60 s: the average at the deployed cadence of one minute a minute "
        "(the replay runs minutes back to back)."
    )


def run(n_symbols: int, minutes: int, chunk: int, tmp: Path, redis_url: str, sample_s: float) -> None:
    market = SimulatedMarket()
    symbols = market.list_symbols()[:n_symbols]
    end = floor_minute(now_ms()) - (minutes + 2) * MINUTE_MS
    first = end - minutes * MINUTE_MS
    began = time.perf_counter()
    with scratch_postgres() as url, claim_redis(redis_url):
        engine = db.get_engine(url)
        loaded = load_history(engine, market, symbols, minutes, end)
        registry = untrained_registry(tmp / f"models-{n_symbols}-{uuid.uuid4().hex[:6]}", "benchmark")
        env = worker_env(url, redis_url, registry, n_symbols, chunk, metrics=True)
        print(f"{loaded.inserted:,} candles loaded in {time.perf_counter() - began:.0f} s")
        sampler = Sampler(sample_s)
        beside = ExporterBeside(env, 15.0, 15.0)  # as deployed: refresh and scrape every 15 s
        exporter_log: list[str] = []
        # Its output is a pipe that nobody else reads: drained, so that it can never block on a write.
        drain = threading.Thread(target=_drain, args=(beside, exporter_log), daemon=True)
        drain.start()
        beside.set_active(True)
        sampler.add("metrics", beside.process.pid)
        try:
            done = replay_sampled(env, tmp, engine, first, minutes, sampler)
        except BaseException:
            traceback.print_exc()  # before the clean-up, which may fail too
            raise
        finally:
            sampler.stop()
            try:
                beside.close()
            except subprocess.TimeoutExpired:
                beside.process.kill()
                print("the exporter did not stop on SIGTERM within 30 s: killed")
            if exporter_log:
                print("exporter output (tail):\n" + "".join(exporter_log[-20:]))
    report(
        sampler,
        minutes,
        done,
        f"{n_symbols} symbols, {-(-n_symbols // chunk)} feature tasks per minute, one worker per queue "
        f"(features: two single-process workers), sampled every {sample_s * 1000:.0f} ms",
    )


def _drain(beside: ExporterBeside, sink: list[str]) -> None:
    stream = beside.process.stdout
    if stream is not None:
        for line in stream:
            sink.append(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=50, help="symbols per feature task")
    parser.add_argument("--sample-ms", type=float, default=100.0)
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        run(args.symbols, args.minutes, args.chunk, Path(tmp), args.redis_url, args.sample_ms / 1000)


if __name__ == "__main__":
    main()
