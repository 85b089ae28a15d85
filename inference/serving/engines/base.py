"""The interface every engine implements.

An engine takes an OpenAI request body (already validated by the gateway for what the gateway
needs) and returns OpenAI responses: a whole response with ``usage``, or stream chunks. In a
stream, chunks carry the usage so far (``usage`` on each chunk, as vLLM's
``continuous_usage_stats`` does) when the engine can count, so a stream cut short is still
metered from the engine's own counts. Invalid requests raise ``ApiError`` (an OpenAI-shaped 400).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

Endpoint = Literal["chat.completions", "completions", "embeddings"]


class Engine(Protocol):
    async def start(self) -> None:
        """Load or connect; the replica is ready when this returns."""

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        """A whole (non-streaming) response, with ``usage``. ``priority`` is the platform's
        scheduling priority for the request (lower first); engines that cannot schedule by
        priority ignore it."""

    def stream(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream chunks; the last one carries the final ``usage`` and no choices."""

    async def check_health(self) -> None:
        """Raise if the engine cannot serve (Ray Serve then replaces the replica)."""

    async def aclose(self) -> None:
        """Stop: finish or abort in-flight work and free resources."""
