"""The data plane's own log records, in the Ray Serve replica logs as readable lines.

Inside a replica, Ray Serve configures only its own logger (``ray.serve``: a file per replica,
lines stamped with the replica and the request id) and stops it from propagating; it then
redirects the process's stdout and stderr into that logger at INFO. Records of our loggers
(``inference.serving.*``) therefore reached no handler at all: Python's last-resort handler wrote
them to stderr, so errors became INFO lines and a traceback a repr of a tuple.

:func:`route_to_serve_logs` hands our loggers Serve's handlers, so a warning is a WARNING line
of the replica log, a traceback is printed as one, and each line carries the replica and request
context Serve adds. Outside a replica (unit tests, benchmarks) ``ray.serve`` has no handlers and
nothing changes: records propagate to the root logger as usual.
"""

from __future__ import annotations

import logging

DATA_PLANE_LOGGER = "inference.serving"
SERVE_LOGGER = "ray.serve"


def route_to_serve_logs(level: int = logging.INFO) -> bool:
    """Attach Ray Serve's replica-log handlers to the data plane's loggers; idempotent.
    Returns whether Serve's logger was configured (we are inside a replica)."""
    serve_logger = logging.getLogger(SERVE_LOGGER)
    if not serve_logger.handlers:
        return False
    ours = logging.getLogger(DATA_PLANE_LOGGER)
    ours.handlers = list(serve_logger.handlers)
    ours.setLevel(level)
    ours.propagate = False
    return True
