"""Metrics to CSV and TensorBoard during a run, and the loss/metric plot at its end (rank 0 only)."""
from __future__ import annotations

import csv
import math
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ..utils.plots import save_figure  # noqa: E402

FIELDS = ["step", "metric", "value", "time_s"]


class MetricsLogger:
    """Appends `step,metric,value,time_s` rows to RUN/metrics.csv and scalars to RUN/tensorboard.

    On resume from step `resume_step`, rows of later steps (written after that checkpoint by the interrupted run,
    and about to be recomputed) are dropped first, so the CSV reads as one uninterrupted run.
    """

    def __init__(self, csv_path: Path, tensorboard_dir: Path, resume_step: int = 0):
        self.csv_path = Path(csv_path)
        kept: list[dict[str, str]] = []
        if resume_step and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        self._file = open(self.csv_path, "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=FIELDS)
        self._csv.writeheader()
        self._csv.writerows(kept)
        self._file.flush()
        self._t0 = time.monotonic() - (float(kept[-1]["time_s"]) if kept else 0.0)
        from torch.utils.tensorboard import SummaryWriter
        self._tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        elapsed = round(time.monotonic() - self._t0, 3)
        for name, value in metrics.items():
            self._csv.writerow({"step": step, "metric": name, "value": repr(float(value)), "time_s": elapsed})
            self._tb.add_scalar(name, value, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def read_metrics(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(step, value), ...] from a run's metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(csv_path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                series[row["metric"]].append((int(row["step"]), float(row["value"])))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{csv_path}, line {line}: expected columns {FIELDS}; got {row}") from None
    return dict(series)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def plot_metrics(csv_path: Path, out_png: Path, title: str = "", counts: set[str] = frozenset()) -> Path:
    """One panel per metric (losses on a log scale) against the optimiser step. A metric logged once (a final
    evaluation) is a number, not a curve: it is written in the title instead; ``counts`` (how many items an
    evaluation scored) are left out."""
    series = {name: points for name, points in read_metrics(csv_path).items() if name not in counts}
    single = {name: points[0] for name, points in series.items() if len(points) == 1}
    names = sorted((n for n in series if n not in single), key=lambda n: (not n.endswith("loss"), n))
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        if name.endswith("loss") and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    lines = [title] if title else []
    lines += [", ".join(f"{name} {value:.4g} (step {step})" for name, (step, value) in group)
              for group in _chunks(sorted(single.items()), 3)]
    if lines:
        fig.suptitle("\n".join(lines), fontsize=10)
    return save_figure(fig, out_png)
