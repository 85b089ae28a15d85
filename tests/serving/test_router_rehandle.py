"""A model's request router changes: the gateway keeps its old handle while the model's
application is rebuilt, then takes a new one (a Serve handle keeps the router it was built
with). In process, with the handle factory and Serve's status answered by the test; the same
behaviour on a real Ray Serve is ``tests/inference/test_request_router_ray.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from inference.serving.gateway import Gateway

T = TypeVar("T")


def _args(tmp_path: Path) -> dict[str, Any]:
    return {
        "spec_version": 1,
        "redis_url": "redis://127.0.0.1:6379/0",  # never reached: nothing here asks Redis
        "redis_prefix": "vltest:rehandle:",
        "broker_url": "redis://127.0.0.1:6379/0",
        "usage_spool_dir": str(tmp_path / "spool"),
    }


def _config(revision: str, routers: dict[str, str]) -> dict[str, Any]:
    return {
        "revision": revision,
        "models": [
            {
                "name": name,
                "deployment": f"model-{name}",
                "engine": "synthetic",
                "context_length": 512,
                "request_router": router,
            }
            for name, router in routers.items()
        ],
    }


class Cluster:
    """Serve as the gateway sees it: handles by deployment, numbered as they are made, and
    whether each application runs in a given router's shape."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.settled: dict[str, str] = {}  # deployment -> the router it runs with
        self.asked = 0

    def handle(self, deployment: str) -> tuple[Any, Any]:
        self.made.append(deployment)
        return (f"{deployment}#{len(self.made)}", "stream")

    def is_settled(self, app: str, router: str) -> bool:
        self.asked += 1
        return self.settled.get(app) == router


def _run(
    tmp_path: Path,
    monkeypatch: Any,
    scenario: Callable[[Gateway], Awaitable[T]],
    *,
    handle_factory: Callable[[str], Any],
    settled: Callable[[str, str], bool],
) -> T:
    """``scenario`` on a gateway with these stand-ins for Serve, closed afterwards as Serve
    stops a replica."""
    monkeypatch.setenv("VLINDERS_KEY_PEPPER", "test-pepper")

    async def main() -> T:
        gateway = Gateway(_args(tmp_path), handle_factory=handle_factory, settled=settled)
        try:
            return await scenario(gateway)
        finally:
            await gateway.__del__()

    return asyncio.run(main())


async def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_new_handle_only_once_the_application_runs_with_the_new_router(
    tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster()

    async def scenario(gateway: Gateway) -> None:
        await gateway.reconfigure(_config("r1", {"a": "default", "b": "default"}))
        first_a, first_b = gateway.handles["model-a"], gateway.handles["model-b"]

        await gateway.reconfigure(_config("r2", {"a": "prefix_affinity", "b": "default"}))
        # Kept while the application is rebuilt: the model answers throughout.
        assert gateway.handles["model-a"] is first_a
        await _wait_for(lambda: cluster.asked >= 2)
        assert gateway.handles["model-a"] is first_a

        cluster.settled["model-a"] = "prefix_affinity"
        await _wait_for(lambda: gateway.handles["model-a"] is not first_a)
        assert gateway.handles["model-a"][0] == "model-a#3"  # a new one, made once
        assert gateway.handles["model-b"] is first_b  # its router did not change
        assert cluster.made == ["model-a", "model-b", "model-a"]
        assert not gateway._rehandling  # nothing left waiting

    _run(tmp_path, monkeypatch, scenario, handle_factory=cluster.handle, settled=cluster.is_settled)


def test_a_newer_change_replaces_the_wait_for_an_older_one(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster()

    async def scenario(gateway: Gateway) -> None:
        await gateway.reconfigure(_config("r1", {"a": "default"}))
        await gateway.reconfigure(_config("r2", {"a": "prefix_affinity"}))
        waiting = gateway._rehandling["model-a"]
        await gateway.reconfigure(_config("r3", {"a": "default"}))  # changed back
        await asyncio.sleep(0)
        assert waiting.cancelled()
        # The application still runs as before the first change, which is now the goal.
        cluster.settled["model-a"] = "default"
        await _wait_for(lambda: len(cluster.made) == 2)
        assert not gateway._rehandling
        # An apply that does not change the router makes no handle and waits for nothing.
        await gateway.reconfigure(_config("r4", {"a": "default"}))
        assert not gateway._rehandling
        assert cluster.made == ["model-a", "model-a"]
        # A model removed while its new router is awaited: the wait ends with it.
        await gateway.reconfigure(_config("r5", {"a": "prefix_affinity"}))
        waiting = gateway._rehandling["model-a"]
        await gateway.reconfigure(_config("r6", {}))
        await asyncio.sleep(0)
        assert waiting.cancelled()
        assert not gateway._rehandling

    _run(tmp_path, monkeypatch, scenario, handle_factory=cluster.handle, settled=cluster.is_settled)


def test_a_status_that_fails_is_asked_again(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster()
    failures = [RuntimeError("controller unreachable")]

    def flaky(app: str, router: str) -> bool:
        if failures:
            raise failures.pop()
        return True

    async def scenario(gateway: Gateway) -> list[str]:
        await gateway.reconfigure(_config("r1", {"a": "default"}))
        await gateway.reconfigure(_config("r2", {"a": "prefix_affinity"}))
        await asyncio.wait_for(gateway._rehandling["model-a"], timeout=10)
        return cluster.made

    made = _run(tmp_path, monkeypatch, scenario, handle_factory=cluster.handle, settled=flaky)
    assert made == ["model-a", "model-a"]
