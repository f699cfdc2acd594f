"""The training log of :func:`surrogate.train.fit`: metric rows averaged over steps and ranks,
kept in memory, appended to ``log.csv`` and shown on a progress bar by rank 0.

``log.csv`` has one row per ``log_every`` steps (``step``, ``epoch``, the step's metrics averaged
over those steps and over ranks, ``seconds`` since the start) and one per validation (``step``,
``epoch``, ``validation``); a resumed run drops the rows written after its checkpoint.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Mapping

from tqdm.auto import tqdm

from surrogate.data.hdf5 import atomic_output
from surrogate.train import distributed

__all__ = ["CsvLog", "MetricLog"]


class CsvLog:
    """Appends metric rows to a CSV file; on resume drops rows after the resumed step. A row
    with a column the file lacks (the first ``validation`` value, say) rewrites the file with
    the wider header, so no value is dropped.

    Arguments:
        path: the CSV file.
        resume_step: keep the existing rows up to this step (0: start a new file).
    """

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]
            if rows and resume_step > 0:
                self.fields = list(rows[0].keys())
                self._rewrite(rows)
            else:
                path.unlink()

    def _rewrite(self, rows: list[dict]) -> None:
        with atomic_output(self.path, fsync=False) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, float]) -> None:
        """Appends ``row`` (missing columns empty)."""
        if self.fields is None:
            self.fields = list(row.keys())
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        new = [k for k in row if k not in self.fields]
        if new:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields = self.fields + new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: row.get(k, "") for k in self.fields}
            )


class MetricLog:
    """Averages step metrics into rows: kept in ``history`` on every rank; written to
    ``out/log.csv`` and shown on a tqdm bar by rank 0. A context manager (closes the bar).

    Arguments:
        out: the run folder, or ``None`` for no file.
        start_step: steps already done (a resumed run).
        max_steps: the bar's total.
        progress: show the bar (rank 0 only).
    """

    def __init__(self, out: Path | None, start_step: int, *, max_steps: int, progress: bool):
        main = distributed.context().is_main
        self.csv = CsvLog(out / "log.csv", start_step) if (out is not None and main) else None
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not (progress and main), desc="train",
                        dynamic_ncols=True)
        self.history: list[dict[str, float]] = []
        self.sums: dict[str, float] = {}
        self.count, self.t0 = 0, time.perf_counter()

    def __enter__(self) -> "MetricLog":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def add(self, metrics: Mapping[str, float]) -> None:
        """Adds one step's metrics."""
        self.bar.update(1)
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def row(self, step: int, epoch: int) -> None:
        """Logs the averages since the last row (a collective: every rank calls it)."""
        means = distributed.all_reduce_mean({k: v / self.count for k, v in self.sums.items()})
        row = {"step": step, "epoch": epoch, **means, "seconds": time.perf_counter() - self.t0}
        self.history.append(row)
        if self.csv is not None:
            self.csv.write(row)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
        self.sums, self.count = {}, 0

    def validation(self, step: int, epoch: int, value: float) -> None:
        """Logs a validation value (the same on every rank)."""
        self.history.append({"step": step, "validation": value})
        if self.csv is not None:
            self.csv.write({"step": step, "epoch": epoch, "validation": value})
