"""How long the ``mlsignals`` console script takes to start: ``--help`` and ``data status``.

Each command runs ``--runs`` times as a fresh subprocess (the installed console script, as a user
runs it) against a throw-away SQLite database; the script prints min / median / max wall seconds,
the sample count and the target with pass or fail, then the ten largest self import times of
``--help`` from ``python -X importtime``. It reports, it does not fail: the exit status is 0.

    python -m benchmarks.bench_cli [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("mlsignals")


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    target_s: float


CASES = (
    Case("mlsignals --help", ("--help",), 0.5),
    Case("mlsignals data status", ("data", "status"), 1.5),
)


def bench_env(data_dir: Path) -> dict[str, str]:
    """This environment without any MLSIG_ setting, plus a private SQLite database and data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")}
    env.update(
        MLSIG_DATA_DIR=str(data_dir),
        MLSIG_DATABASE_URL=f"sqlite:///{(data_dir / 'bench.db').as_posix()}",
        MLSIG_LOG_LEVEL="WARNING",
        COLUMNS="120",
    )
    return env


def run_once(args: tuple[str, ...], env: dict[str, str], cwd: Path) -> float:
    began = time.perf_counter()
    done = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return took


def import_times(env: dict[str, str], cwd: Path, top: int = 10) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module) of the slowest imports of ``mlsignals --help``."""
    code = "import sys; sys.argv = ['mlsignals', '--help']; from cli.main import app; app()"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    rows: list[tuple[int, int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3:
            continue
        rows.append((int(parts[0]), int(parts[1]), parts[2].rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="Runs of each command.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        data_dir = Path(tmp)
        env = bench_env(data_dir)
        # The first ``data status`` creates and migrates the database: not part of the figures.
        run_once(("data", "status"), env, data_dir)
        print(f"{'command':<26}{'min':>8}{'median':>8}{'max':>8}{'n':>4}  target")
        for case in CASES:
            samples = [run_once(case.args, env, data_dir) for _ in range(args.runs)]
            median = statistics.median(samples)
            verdict = "pass" if median <= case.target_s else "FAIL"
            print(
                f"{case.name:<26}{min(samples):>8.3f}{median:>8.3f}{max(samples):>8.3f}{len(samples):>4}"
                f"  median <= {case.target_s} s: {verdict}"
            )
        print("\nslowest imports of `mlsignals --help` (self, cumulative; ms):")
        for own, cumulative, module in import_times(env, data_dir):
            print(f"{own / 1000:>8.1f}{cumulative / 1000:>9.1f}  {module}")


if __name__ == "__main__":
    main()
