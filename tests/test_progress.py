"""Progress bars in a log file: one line per LOG_INTERVAL_S, whatever the stage does to the bar."""

from __future__ import annotations

import io
import sys

from dvt import progress as progress_module


def test_a_bar_in_a_log_file_writes_a_line_per_interval_not_per_postfix(monkeypatch):
    """set_postfix refreshes a tqdm bar by itself unless told not to; the stages tell it not to, so a
    log file gets its lines at the 30-second interval (here made 1 hour: only the first and last line)."""
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 3600.0)
    bar = progress_module.progress(range(500), desc="train", mininterval=1.0)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)  # as dvt/stages/train.py does
    lines = log.getvalue().replace("\r", "\n").strip().splitlines()
    assert len([line for line in lines if line.strip()]) <= 3, lines
    assert "500/500" in lines[-1]
    # the refresh the stages turn off: every call writes another line
    log.truncate(0)
    bar = progress_module.progress(range(50), desc="train")
    for step in bar:
        bar.set_postfix(loss=f"{step}")
    assert log.getvalue().count("\r") >= 50
