"""``ModelServer``: one Ray Serve deployment per catalog model, wrapping one engine.

Streams cross Ray as lists of chunks: every chunk that is ready when the gateway asks for the
next message travels in that one message, so a busy replica is not limited by one Ray message
per token, while the first chunk still goes out the moment it exists. Nothing waits to fill a
list: the interval that bounds a batch is the time the previous message took to be taken, so an
idle replica sends token by token and a busy one sends what piled up meanwhile.
``bench/stream_batching.py`` measures it against one message per chunk
(``VLINDERS_STREAM_BATCHING=0`` in the replica's environment, a switch for that measurement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from inference.serving import errors, metrics
from inference.serving.engines.base import Endpoint, Engine
from inference.serving.logs import route_to_serve_logs
from inference.serving.spec import ModelArgs

logger = logging.getLogger(__name__)

_END = object()


def make_engine(spec: ModelArgs) -> Engine:
    """The engine for a model's args (one place that knows every engine kind)."""
    if spec.engine == "synthetic":
        from inference.serving.engines.synthetic import SyntheticEngine

        return SyntheticEngine(model=spec.name, **spec.engine_args)
    if spec.engine == "openai":
        from inference.serving.credentials import UpstreamCredentials
        from inference.serving.engines.openai_upstream import OpenAIUpstreamEngine

        # The upstream's key never travels in the Serve config: the control plane publishes
        # it, encrypted, to Redis, and the engine reads it there (rotation needs no restart).
        credentials = UpstreamCredentials(
            aioredis.Redis.from_url(spec.redis_url, socket_timeout=2, socket_connect_timeout=2),
            prefix=spec.redis_prefix,
            deployment=spec.deployment,
        )
        return OpenAIUpstreamEngine(
            base_url=spec.source["base_url"],
            model=spec.source["model"],
            credentials=credentials,
            **{"timeout_s": spec.request_timeout_s, **spec.engine_args},
        )
    if spec.engine == "vllm":
        from inference.serving.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model=spec.name, path=spec.source["path"], **spec.engine_args)
    if spec.engine == "llamacpp":
        from inference.serving.engines.llamacpp_engine import LlamaCppEngine

        # The GGUF file as it is; llama.cpp's threads default to the replica's CPUs.
        return LlamaCppEngine(
            model=spec.name,
            path=spec.source["path"],
            cpus=spec.resources.num_cpus,
            **spec.engine_args,
        )
    raise ValueError(f"unknown engine {spec.engine!r}")


class ModelServer:
    """The body of every model deployment (``app.py`` wraps it with ``serve.deployment``)."""

    async def __init__(self, spec: dict[str, Any]) -> None:  # type: ignore[misc]
        """Start the engine before the replica counts as ready: Ray Serve awaits an async
        constructor, so no request reaches a replica whose model is still loading."""
        route_to_serve_logs()
        await self._start(spec)

    async def _start(self, spec: dict[str, Any]) -> None:
        self.spec = ModelArgs.model_validate(spec)
        self.batching = os.environ.get("VLINDERS_STREAM_BATCHING", "1") != "0"
        self.engine = make_engine(self.spec)
        await self.engine.start()

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], priority: int = 0
    ) -> dict[str, Any]:
        """``priority`` is the organisation's plan priority, from the gateway (never from the
        client's body). A request the gateway cancels (its timeout, or its client left) is
        cancelled here, which aborts it in the engine."""
        try:
            return await self.engine.complete(endpoint, body, priority=priority)
        except asyncio.CancelledError:
            metrics.ENGINE_CANCELLED.labels(self.spec.name).inc()
            raise

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], priority: int = 0
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield lists of chunks: everything ready at each step, never waiting to fill a list."""
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def produce() -> None:
            try:
                async for chunk in self.engine.stream(endpoint, body, priority=priority):
                    queue.put_nowait(chunk)
            except Exception as error:
                queue.put_nowait(error)
            finally:
                queue.put_nowait(_END)

        producer = asyncio.get_running_loop().create_task(produce())
        completed = False
        try:
            while True:
                batch = [await queue.get()]
                while self.batching and not queue.empty():
                    batch.append(queue.get_nowait())
                done = batch[-1] is _END
                chunks = [item for item in batch if item is not _END]
                for item in chunks:
                    if isinstance(item, BaseException):
                        raise item
                if chunks:
                    yield chunks
                if done:
                    completed = True
                    return
        finally:
            # A client that went away cancels this generator: stop the engine's work too.
            if not completed:
                metrics.ENGINE_CANCELLED.labels(self.spec.name).inc()
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def stats(self) -> dict[str, Any]:
        """Engine counters, for tests and operators (e.g. how many streams were cancelled)."""
        return {
            key: getattr(self.engine, key)
            for key in ("active", "cancelled")
            if hasattr(self.engine, key)
        }

    async def check_health(self) -> None:
        """Called by Ray Serve periodically; raising marks the replica unhealthy (an engine
        that died), and Ray Serve replaces it."""
        await self.engine.check_health()

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await self.engine.aclose()


class _InProcessServer(ModelServer):
    """A ``ModelServer`` run by ``LocalModel``: closed by it (``LocalModel.aclose``), so it has
    no Serve finaliser (an ``async __del__`` that nothing would await)."""

    def __del__(self) -> None:  # type: ignore[override]
        return None


class LocalModel:
    """A model served inside the gateway's own process, behind the same interface as its
    Serve handles (``handles()``: ``plain.complete.remote(...)``, ``streamed.stream.remote(...)``).

    For the ``openai`` engine: the work is an HTTP call to the upstream, which needs no replica
    of its own, so the gateway makes it itself and a request costs no Ray hop (a model
    application in between would add one, and its CPU, for nothing). The same ``ModelServer``
    code runs, so errors, usage, cancellation and the stream's batching are what a model
    application does. A cancelled call (the request's timeout, its client gone) cancels the
    engine's work as a cancelled Serve call does.
    """

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.server = _InProcessServer.__new__(_InProcessServer)

    async def start(self) -> None:
        await self.server._start(self.args)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.engine.aclose()

    def handles(self) -> tuple[Any, Any]:
        return _LocalPlain(self.server), _LocalStreamed(self.server)


# What a client refused by an in-process model that could not start is asked to wait.
UNAVAILABLE_RETRY_S = 2


class UnavailableModel(LocalModel):
    """An in-process model whose engine could not start (engine arguments it refuses, say): its
    requests are answered 503 ``model_unavailable`` at once, and every other model keeps being
    served, since a gateway whose configure failed would take every model down with it. It is
    never kept: the next configure tries to start the engine again."""

    def __init__(self, args: dict[str, Any], reason: str) -> None:
        super().__init__(args)
        self.args = {"unavailable": reason}  # never equal to a real model's args
        self.name = str(args.get("name", ""))

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def handles(self) -> tuple[Any, Any]:
        def refuse(*_: Any) -> Any:
            raise errors.ApiError(
                503,
                f"The model `{self.name}` is not available right now; retry shortly.",
                "server_error",
                None,
                "model_unavailable",
                {"Retry-After": str(UNAVAILABLE_RETRY_S)},
            )

        plain, streamed = _LocalPlain.__new__(_LocalPlain), _LocalStreamed.__new__(_LocalStreamed)
        plain.complete = _Remote(refuse)
        streamed.stream = _Remote(refuse)
        return plain, streamed


class _LocalPlain:
    def __init__(self, server: ModelServer) -> None:
        self.complete = _Remote(lambda *a: asyncio.ensure_future(server.complete(*a)))


class _LocalStreamed:
    def __init__(self, server: ModelServer) -> None:
        self.stream = _Remote(lambda *a: _LocalStream(server.stream(*a)))


class _Remote:
    def __init__(self, call: Any) -> None:
        self.remote = call


class _LocalStream:
    """A ``ModelServer.stream`` generator with a Serve streaming response's ``cancel``."""

    def __init__(self, generator: AsyncIterator[list[dict[str, Any]]]) -> None:
        self._generator = generator
        self._closing: asyncio.Task[None] | None = None

    def __aiter__(self) -> _LocalStream:
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        return await self._generator.__anext__()

    def cancel(self) -> None:
        """Stop the engine's work: close the generator (its ``finally`` cancels the engine's
        producer and counts the cancellation), in a task of its own as Serve's cancel is."""
        if self._closing is None:
            closing = asyncio.get_running_loop().create_task(self._close())
            self._closing = closing

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self._generator.aclose()  # type: ignore[attr-defined]
