"""channels' own ``WebsocketCommunicator``, importable without daphne.

``channels.testing/__init__`` imports its live-server test case, which needs the daphne server
(and Twisted); nothing here uses it. When daphne is missing, the package is registered without
running that ``__init__`` and the communicator module is imported from it, unchanged.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

try:
    from channels.testing import WebsocketCommunicator
except ModuleNotFoundError as exc:  # pragma: no cover - depends on what is installed
    if exc.name is None or not exc.name.startswith("daphne"):
        raise
    import channels

    package = types.ModuleType("channels.testing")
    package.__path__ = [str(Path(channels.__file__).parent / "testing")]
    sys.modules["channels.testing"] = package
    from channels.testing.websocket import WebsocketCommunicator

__all__ = ["WebsocketCommunicator"]
