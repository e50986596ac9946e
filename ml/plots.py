"""PNG charts of an evaluation (``mlsignals model evaluate --plot DIR``), per period:

* ``<period>_reliability.png``: one reliability diagram per horizon (accuracy against mean
  confidence of each bin of the top probability, the diagonal for perfect calibration, the ECE);
* ``<period>_equity.png``: the backtest's cumulative net PnL, raw and market-neutral;
* ``<period>_ic.png``: per horizon, the rolling mean (one day of anchor times) of the per-time IC
  of the network and of that period's best baseline.

matplotlib is imported here only, inside the functions, with the Agg canvas (no display, no pyplot
state): importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DAY_MS = 86_400_000
PERIODS = ("test", "holdout")


def write_plots(metrics: Mapping[str, Any], directory: Path | str, title: str = "") -> list[Path]:
    """Write the charts of every evaluated period of ``metrics`` (with their ``series``) into
    ``directory`` (created); returns the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for period in PERIODS:
        report = metrics.get(period)
        if not isinstance(report, Mapping) or not report.get("horizons") or report.get("available") is False:
            continue
        label = f"{title} {period}".strip()
        written.append(
            save_png(reliability_figure(report["horizons"], label), out / f"{period}_reliability.png")
        )
        series = report.get("series") or {}
        if series.get("backtest"):
            written.append(save_png(equity_figure(series["backtest"], label), out / f"{period}_equity.png"))
        if series.get("ic"):
            best = [h.get("ic", {}).get("best_baseline") for h in report["horizons"]]
            written.append(save_png(ic_figure(series["ic"], best, label), out / f"{period}_ic.png"))
    return written


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _date_axis(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _times(ms: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.datetime64]:
    return np.asarray(ms, dtype=np.int64).astype("datetime64[ms]")


def _values(seq: Sequence[float | None]) -> npt.NDArray[np.float64]:
    return np.array([np.nan if v is None else v for v in seq], dtype=np.float64)


def reliability_figure(horizons: Sequence[Mapping[str, Any]], title: str) -> Figure:
    fig = _figure(3.2 * max(1, len(horizons)), 3.4)
    axes = fig.subplots(1, max(1, len(horizons)), squeeze=False)[0]
    for ax, h in zip(axes, horizons, strict=False):
        cal = h.get("calibration") or {}
        rows = [b for b in cal.get("bins", []) if b.get("count")]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        if rows:
            conf = _values([b["mean_confidence"] for b in rows])
            acc = _values([b["accuracy"] for b in rows])
            counts = np.array([b["count"] for b in rows], dtype=np.float64)
            ax.plot(conf, acc, marker="o", color="tab:blue")
            ax.scatter(conf, acc, s=20 + 200 * counts / counts.max(), alpha=0.3, color="tab:blue")
        ece = cal.get("ece")
        ece_text = "-" if ece is None or not np.isfinite(ece) else f"{ece:.3f}"
        ax.set_title(f"{h['horizon_bars']} bars, ECE {ece_text}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean confidence (top class)")
        ax.set_ylabel("accuracy")
    fig.suptitle(f"reliability {title}".strip(), fontsize=10)
    return fig


def equity_figure(curve: Mapping[str, Sequence[Any]], title: str) -> Figure:
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    times = _times(curve.get("time_ms", []))
    for key, color in (("raw", "tab:blue"), ("neutral", "tab:orange")):
        pnl = np.nan_to_num(_values(curve.get(key, [])))
        if pnl.size:
            ax.plot(times, np.cumsum(pnl), label=f"{key} (net)", color=color)
    ax.axhline(0, color="grey", linewidth=0.8)
    _date_axis(ax)
    ax.set_ylabel("cumulative return (fraction)")
    ax.set_title(f"backtest equity {title}".strip(), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def rolling_mean(values: npt.NDArray[np.float64], window: int) -> npt.NDArray[np.float64]:
    """Mean of the finite values among the last ``window`` (NaN where there are none)."""
    finite = np.isfinite(values)
    s = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    c = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(values.size)
    lo = np.maximum(0, idx + 1 - window)
    n = c[idx + 1] - c[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (s[idx + 1] - s[lo]) / np.maximum(n, 1), np.nan)


def ic_figure(series: Sequence[Mapping[str, Any]], best: Sequence[str | None], title: str) -> Figure:
    fig = _figure(8, 2.2 * max(1, len(series)))
    axes = fig.subplots(max(1, len(series)), 1, squeeze=False, sharex=True)[:, 0]
    for ax, s, name in zip(axes, series, best, strict=False):
        ms = np.asarray(s.get("time_ms", []), dtype=np.int64)
        step = float(np.median(np.diff(ms))) if ms.size > 1 else float(DAY_MS)
        window = max(1, min(round(DAY_MS / step) if step > 0 else 1, max(1, ms.size // 3)))
        times = _times(ms)
        for key, color in (("network", "tab:blue"), (name, "tab:grey")):
            if key and key in s:
                ax.plot(times, rolling_mean(_values(s[key]), window), label=key, color=color)
        ax.axhline(0, color="black", linewidth=0.6)
        _date_axis(ax)
        ax.set_ylabel(f"IC {s.get('horizon_bars', '?')} bars")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"rolling per-time IC {title}".strip(), fontsize=10)
    return fig
