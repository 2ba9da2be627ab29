"""The one progress display: lines with rate and ETA from a long step, and their way through Ray's log dedup."""

from __future__ import annotations

import re

import torch

from ganscale.metrics.c2st import train_classifier
from ganscale.progress import TAG


def test_a_c2st_run_reports_each_epoch_with_rate_and_eta(monkeypatch, capfd):
    monkeypatch.setenv("GANSCALE_PROGRESS_EVERY_S", "0")  # a line per epoch: the run is tiny
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(16, 3, 16, 16, generator=generator) * 0.5
    fake = torch.rand(16, 3, 16, 16, generator=generator) * 0.5 + 0.5
    run = train_classifier("tiny", {"real": real, "fake": fake}, {"real": 1, "fake": 0}, epochs=3, patience=3)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith(TAG + "c2st tiny:")]
    epochs = [line for line in lines if re.search(r": \d+/3 epochs \(\d+%\), [\d.]+ epochs/s, eta \d+ s, "
                                                  r"validation accuracy [\d.]+$", line)]
    assert len(epochs) == run.epochs and run.epochs >= 1
    assert epochs[-1].startswith(f"{TAG}c2st tiny: {run.epochs}/3 epochs")


def test_a_run_stops_once_validation_accuracy_is_one():
    generator = torch.Generator().manual_seed(0)
    black = torch.zeros(32, 3, 16, 16)
    white = torch.ones(32, 3, 16, 16) - 0.01 * torch.rand(32, 3, 16, 16, generator=generator)
    run = train_classifier("easy", {"real": white, "fake": black}, {"real": 1, "fake": 0}, epochs=30, patience=5)
    assert run.validation_accuracy == 1.0 and run.epochs == run.best_epoch < 30


def test_progress_lines_from_two_workers_pass_rays_dedup_at_once():
    import ray._private.ray_logging as ray_logging

    def batch(pid, line):
        return {"ip": "10.0.0.1", "pid": pid, "job": "01", "is_err": True, "lines": [line]}

    dedup = ray_logging.stderr_deduplicator
    first = dedup.deduplicate(batch(1, f"{TAG}embed block1: 1/3 layers (33%), 0.1 layers/s, eta 20 s"))
    second = dedup.deduplicate(batch(2, f"{TAG}embed block2: 2/3 layers (67%), 0.1 layers/s, eta 10 s"))
    assert [b["lines"] for b in first if b["lines"]] == [[f"{TAG}embed block1: 1/3 layers (33%), 0.1 layers/s, eta 20 s"]]
    assert [b["lines"] for b in second if b["lines"]] == [[f"{TAG}embed block2: 2/3 layers (67%), 0.1 layers/s, eta 10 s"]]
    # the same shape of line without the tag is held back by Ray (what kept worker lines to the end)
    dedup.deduplicate(batch(1, "untagged block1: 1/3"))
    held = dedup.deduplicate(batch(2, "untagged block2: 2/3"))
    assert not any(b["lines"] for b in held)
    dedup.flush()
