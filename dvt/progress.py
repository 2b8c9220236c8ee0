"""Progress bars for the long stages: tqdm, but sparse when stderr is a log file, not a terminal.

Under DVC, Snakemake or a cluster scheduler every update of a bar is another line of the job's log
(tqdm rewrites the line with a carriage return), so a bar refreshing every second fills the log with
thousands of them; one update every half minute still shows that the job moves and how fast.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs); when stderr is not a terminal, refreshing at most every LOG_INTERVAL_S
    seconds and always ending its line (leave=True): a bar that erases itself leaves a carriage return
    in a log, and the next message, an error say, would continue the bar's line."""
    if not sys.stderr.isatty():
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL_S)
        kwargs["leave"] = True
    return tqdm(iterable, **kwargs)
