"""The upstream API key of an ``openai``-engine model server, read from Redis (no Django).

The key is never in the Serve config. The control plane (``inference/upstream_secrets.py``)
publishes it after each change as ``<prefix>upstream:v1:<deployment>``: the Fernet token of the
key under the first key of ``VLINDERS_SECRETS_KEY``, so Redis holds no plain key. The model
server is given the same ``VLINDERS_SECRETS_KEY`` in the Ray cluster's environment (several
keys, comma-separated, during a rotation: any of them may open the token).

``UpstreamCredentials.api_key()`` reads and decrypts the record, and keeps it for ``ttl_s``
seconds (5): a new key reaches every replica within that, without a restart or an apply. After
the upstream answers 401 the engine calls ``invalidate()`` so the next request reads again.
No record means the model has no key: ``""``.

When Redis cannot be read (or the token cannot be opened, say during a key rotation done in the
wrong order), a replica that has read the key before keeps using it and tries again after
``ttl_s``; one that never has raises ``UpstreamCredentialsUnavailable``, which the caller turns
into a 503: a request must not go upstream without the platform's credential.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time

import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

RECORD_VERSION = "v1"


class UpstreamCredentialsUnavailable(Exception):
    """The key cannot be read now and none was read before: answer 503 and let the client
    retry."""


def record_name(prefix: str, deployment: str) -> str:
    """``<prefix>upstream:v1:<deployment>``, as the control plane writes it."""
    return f"{prefix}upstream:{RECORD_VERSION}:{deployment}"


def _fernet(keys: str) -> MultiFernet | None:
    parts = [key.strip() for key in keys.split(",") if key.strip()]
    return MultiFernet([Fernet(key) for key in parts]) if parts else None


class UpstreamCredentials:
    """One model server's upstream key: read from Redis, decrypted, cached for ``ttl_s``."""

    ttl_s: float = 5.0

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        deployment: str,
        keys: str | None = None,
    ) -> None:
        """``keys``: ``VLINDERS_SECRETS_KEY`` (comma-separated Fernet keys); by default from the
        environment. A malformed key raises ``ValueError`` here, at start-up. No keys at all is
        allowed until a record must be opened (a model without an upstream key needs none)."""
        self._client = client
        self.name = record_name(prefix, deployment)
        self._fernet = _fernet(os.environ.get("VLINDERS_SECRETS_KEY", "") if keys is None else keys)
        self._value: str | None = None
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._read_at < self.ttl_s

    async def api_key(self) -> str:
        """The plain upstream key (``""`` when the model has none). Raises
        ``UpstreamCredentialsUnavailable`` when it cannot be read and was never read before."""
        if self._fresh():
            assert self._value is not None
            return self._value
        async with self._lock:  # one read per expiry, however many requests wait for it
            if self._fresh():
                assert self._value is not None
                return self._value
            try:
                value = self._open(await self._client.get(self.name))
            except (RedisError, OSError, TimeoutError, UpstreamCredentialsUnavailable) as exc:
                if self._value is None:
                    if isinstance(exc, UpstreamCredentialsUnavailable):
                        raise
                    raise UpstreamCredentialsUnavailable(
                        f"The upstream credential of {self.name} cannot be read: {exc}"
                    ) from exc
                logger.warning(
                    "upstream credential %s: %s; using the key read before, retrying in %ss",
                    self.name,
                    exc,
                    self.ttl_s,
                )
                self._read_at = time.monotonic()
                return self._value
            self._value, self._read_at = value, time.monotonic()
            return value

    def invalidate(self) -> None:
        """Read the record again on the next request (the upstream refused the key). The key
        read before stays as the fallback should Redis be unreachable."""
        self._read_at = -math.inf

    def _open(self, raw: bytes | str | None) -> str:
        if raw is None:
            return ""
        token = raw.encode() if isinstance(raw, str) else raw
        if self._fernet is None:
            raise UpstreamCredentialsUnavailable(
                f"{self.name} holds an upstream key, but VLINDERS_SECRETS_KEY is not set in the "
                "Ray cluster's environment."
            )
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise UpstreamCredentialsUnavailable(
                f"No key of VLINDERS_SECRETS_KEY opens {self.name}: give the Ray cluster the "
                "control plane's keys."
            ) from None
