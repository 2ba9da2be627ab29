"""Progress of long work: a rich bar on a terminal, periodic log lines elsewhere (Ray job logs,
Ray workers: their stderr is forwarded to the driver line by line, so every line is flushed).

One display for every stage: `Progress(label, total, unit)`, `advance(n, note)`, `close(note)`;
`status(text)` for a one-off line. Off a terminal a line "[ganscale] label: done/total unit (pct),
rate, eta[, note]" is printed at most every `every_s` seconds (default 5, or
$GANSCALE_PROGRESS_EVERY_S) and once at the end, so work shorter than `every_s` stays silent.

Ray's driver deduplicates worker lines that are equal once digits are removed (two workers'
progress lines are) and holds the repeats back until a later line arrives, often the end of the
run: lines with the TAG are exempted (RAY_DEDUP_LOGS_ALLOW_REGEX, set before Ray is imported, and
on Ray's deduplicators when it already is)."""

from __future__ import annotations

import os
import re
import sys
import time

TAG = "[ganscale] "
_ALLOW = re.escape(TAG)


def _exempt_from_ray_dedup() -> None:
    previous = os.environ.get("RAY_DEDUP_LOGS_ALLOW_REGEX")
    if previous is None or _ALLOW not in previous:
        os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"] = f"{previous}|{_ALLOW}" if previous else _ALLOW
    logging_module = sys.modules.get("ray._private.ray_logging")
    for name in ("stdout_deduplicator", "stderr_deduplicator"):
        dedup = getattr(logging_module, name, None)
        if dedup is not None and (dedup.allow_re is None or _ALLOW not in dedup.allow_re.pattern):
            dedup.allow_re = re.compile(f"{dedup.allow_re.pattern}|{_ALLOW}" if dedup.allow_re else _ALLOW)


_exempt_from_ray_dedup()


def status(text: str) -> None:
    """One progress line now (flushed: it reaches the Ray driver while the work goes on)."""
    print(TAG + text, file=sys.stderr, flush=True)


class Progress:
    def __init__(self, label: str, total: int, unit: str = "items", every_s: float | None = None):
        if every_s is None:
            every_s = float(os.environ.get("GANSCALE_PROGRESS_EVERY_S", 5.0))
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.done = 0
        self.note = ""
        self.t0 = self.last = time.time()
        self._printed = False
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self._bar = RichProgress(TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                     TextColumn("{task.fields[note]}"), transient=False)
            self._task = self._bar.add_task(label, total=total, rate="", note="")
            self._bar.start()

    def rate(self) -> float:
        return self.done / max(time.time() - self.t0, 1e-9)

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate():,.3g} {self.unit}/s", note=self.note)
        elif time.time() - self.last >= self.every_s or (self.done >= self.total and self._printed):
            self._line()

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        text = (f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:,.3g} {self.unit}/s, eta {eta:,.0f} s")
        return text + (f", {self.note}" if self.note else "")

    def _line(self) -> None:
        self.last = time.time()
        self._printed = True
        status(self.line())

    def close(self, note: str = "") -> None:
        """End the display; off a terminal a last line when anything was printed or `note` is given
        and the work took longer than `every_s`."""
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(self._task, note=self.note)
            self._bar.stop()
            self._bar = None
        elif self._printed and (self.done < self.total or note):
            status(f"{self.label}: done {self.done:,} {self.unit} in {time.time() - self.t0:,.1f} s"
                   + (f", {self.note}" if self.note else ""))
