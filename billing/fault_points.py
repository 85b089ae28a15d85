"""TEST-ONLY pause points in the ingest path, for crash tests with a real Celery worker.

A test that must SIGKILL a worker at a known moment of a batch — after the events were inserted
but before the commit, or after the commit but before the message was acknowledged — starts the
worker with

    VLINDERS_TEST_PAUSE_AT=before_commit|after_commit
    VLINDERS_TEST_PAUSE_MARKER=/path/to/marker   (created when the pause begins)
    VLINDERS_TEST_PAUSE_SECONDS=600              (default 600)

waits for the marker file and kills the worker: deterministic, no timing guesses. Nothing in
production sets these variables; unset, :func:`pause` is one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause(point: str) -> None:
    """Sleep at ``point`` when the test environment asks for it; otherwise do nothing."""
    if os.environ.get("VLINDERS_TEST_PAUSE_AT") != point:
        return
    marker = os.environ.get("VLINDERS_TEST_PAUSE_MARKER")
    if marker:
        Path(marker).write_text(f"{os.getpid()} {point}\n")
    time.sleep(float(os.environ.get("VLINDERS_TEST_PAUSE_SECONDS", "600")))
