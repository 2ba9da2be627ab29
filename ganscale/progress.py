"""Progress of long work: a rich bar on a terminal, periodic log lines elsewhere (Ray job logs)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, unit: str = "items", every_s: float = 5.0):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.done = 0
        self.t0 = self.last = time.time()
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self._bar = RichProgress(TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task(label, total=total, rate="")
            self._bar.start()

    def rate(self) -> float:
        return self.done / max(time.time() - self.t0, 1e-9)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate():,.0f} {self.unit}/s")
        elif time.time() - self.last >= self.every_s or self.done >= self.total:
            self.last = time.time()
            self._line()

    def _line(self) -> None:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        print(f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
              f"{rate:,.0f} {self.unit}/s, eta {eta:,.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
