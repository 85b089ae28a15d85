"""Fixtures for applying the catalog to the session's real local Ray (``ray_cluster``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from inference.ray_client import RayDashboardClient
from inference.ray_local import LocalRay


@pytest.fixture(scope="module")
def serve_instance(ray_cluster: LocalRay, serve_port: int) -> tuple[RayDashboardClient, int]:
    """Serve on the session cluster, on the session's Serve port (Serve fixes its HTTP options
    when it first starts, so every module deploys on the same port)."""
    client = RayDashboardClient(base_url=ray_cluster.dashboard_url, token=ray_cluster.token)
    return client, serve_port


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return Path(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def usage_queue(module_dir: Path) -> Iterator[str]:
    """The broker queue the module's gateways send usage events to, removed afterwards. Never
    the default ``usage`` queue: no worker takes these events in the tests, and a worker of the
    machine's own (a ``make up`` on the same Redis) would ingest them as real usage."""
    from django.conf import settings

    name = f"vltest-usage-{module_dir.name}"
    yield name
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        client.delete(name, *client.keys(f"{name}*"))
    finally:
        client.close()


@pytest.fixture
def ray_settings(settings, ray_cluster: LocalRay, serve_instance, module_dir, usage_queue):  # type: ignore[no-untyped-def]
    """Point the control plane at the test cluster. The Redis prefix, usage queue and spool
    folder are the module's, so the same catalog renders the same revision in every test (Ray
    then keeps the replicas instead of replacing them: faster)."""
    settings.VLINDERS_USAGE_QUEUE = usage_queue
    settings.VLINDERS_RAY_DASHBOARD_URL = ray_cluster.dashboard_url
    settings.VLINDERS_RAY_AUTH_TOKEN = ray_cluster.token
    settings.VLINDERS_GATEWAY_PORT = serve_instance[1]
    settings.VLINDERS_USAGE_SPOOL_DIR = module_dir / "usage-spool"
    settings.VLINDERS_REDIS_PREFIX = f"vltest:deploy:{module_dir.name}:"
    return settings


@pytest.fixture
def serve(ray_settings, serve_instance) -> RayDashboardClient:  # type: ignore[no-untyped-def]
    return serve_instance[0]
