"""A redis-py asyncio connection that encodes commands with hiredis (C), not in Python.

redis-py's asyncio client encodes every argument of every command in Python
(``AbstractConnection.pack_command``: a type check, an encode and a bytes join per argument).
The gateway sends two limiter scripts of ~40 arguments per request, and that encoding was the
largest single cost of its Redis client (``bench/redis_parser.py`` measures it: about a quarter
of the client's CPU per script call). redis-py's *sync* client already packs with hiredis when
it is installed; its asyncio client does not, so the data plane's pool uses this connection
class (``connection_class``, redis-py's extension point for it).

The bytes sent are the same: hiredis packs only commands whose arguments are all ``str``
(UTF-8, the client's encoding), ``bytes`` or ``int`` (decimal); any other argument (a float, a
bool, a memoryview) goes to redis-py's own encoder, which formats or refuses it as it always did.
Without hiredis this is redis-py's connection unchanged.

This module is part of the data plane: it must never import Django or the control-plane apps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a pinned dependency of the data plane
    _hiredis_pack = None

_PLAIN = (str, bytes, int)


class HiredisPackingConnection(aioredis.Connection):
    """``redis.asyncio.Connection`` with commands encoded by hiredis (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Decided once per connection, not per command: its encoder never changes.
        encoder = self.encoder
        self._hiredis_packs = (
            _hiredis_pack is not None
            and encoder.encoding.lower().replace("-", "") == "utf8"
            and encoder.encoding_errors == "strict"
        )

    def pack_command(self, *args: Any) -> list[bytes]:
        if not self._hiredis_packs or not all(type(arg) in _PLAIN for arg in args):
            return super().pack_command(*args)
        assert _hiredis_pack is not None  # implied by _hiredis_packs
        first = args[0]
        if " " in first if isinstance(first, str) else b" " in first:
            # 'SCRIPT LOAD' and the like: Redis expects the words as separate arguments.
            args = (*first.split(), *args[1:])
        return [_hiredis_pack(args)]
