"""The data plane's own log records, in the Ray Serve replica logs as readable lines.

Inside a replica, Ray Serve configures only its own logger (``ray.serve``: a file per replica,
lines stamped with the replica and the request id) and stops it from propagating; it then
redirects the process's stdout and stderr into that logger at INFO. Records of our loggers
(``inference.serving.*``) therefore reached no handler at all: Python's last-resort handler wrote
them to stderr, so errors became INFO lines and a traceback a repr of a tuple.

:func:`route_to_serve_logs` gives our loggers handlers that write to Serve's replica log file
with Serve's formatter and filters, so a warning is a WARNING line of the replica log, a
traceback is printed as one, and each line carries the replica and request context Serve adds.
Serve's high-throughput mode buffers a replica's records (1,000 at a time) and writes early
only for an ERROR; ours are written at once from WARNING up, and the gateway flushes the
buffered INFO lines (the access lines) every few seconds (:func:`flush`), so a quiet replica's
lines appear too. Outside a replica (unit tests, benchmarks) ``ray.serve`` has no handlers and
nothing changes: records propagate to the root logger as usual.
"""

from __future__ import annotations

import logging
import logging.handlers

DATA_PLANE_LOGGER = "inference.serving"
SERVE_LOGGER = "ray.serve"


def _ours(handler: logging.Handler) -> logging.Handler:
    """A handler like Serve's, but one that writes WARNING and above at once."""
    if not isinstance(handler, logging.handlers.MemoryHandler) or handler.target is None:
        return handler
    mine = logging.handlers.MemoryHandler(
        capacity=handler.capacity, flushLevel=logging.WARNING, target=handler.target
    )
    for record_filter in handler.filters:
        mine.addFilter(record_filter)
    return mine


def route_to_serve_logs(level: int = logging.INFO) -> bool:
    """Send the data plane's records to the replica's Serve log; idempotent. Returns whether
    Serve's logger was configured (we are inside a replica)."""
    serve_logger = logging.getLogger(SERVE_LOGGER)
    if not serve_logger.handlers:
        return False
    ours = logging.getLogger(DATA_PLANE_LOGGER)
    if not ours.handlers:
        ours.handlers = [_ours(handler) for handler in serve_logger.handlers]
    ours.setLevel(level)
    ours.propagate = False
    return True


def flush() -> None:
    """Write what the data plane's handlers buffered (cheap when they hold nothing)."""
    for handler in logging.getLogger(DATA_PLANE_LOGGER).handlers:
        handler.flush()
