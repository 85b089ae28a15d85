"""Fixtures for applying the catalog to the session's real local Ray (``ray_cluster``)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture
def ray_settings(settings, ray_cluster: LocalRay, serve_instance, module_dir):  # type: ignore[no-untyped-def]
    """Point the control plane at the test cluster. The Redis prefix and spool folder are the
    module's, so the same catalog renders the same revision in every test (Ray then keeps the
    replicas instead of replacing them: faster)."""
    settings.VLINDERS_RAY_DASHBOARD_URL = ray_cluster.dashboard_url
    settings.VLINDERS_RAY_AUTH_TOKEN = ray_cluster.token
    settings.VLINDERS_GATEWAY_PORT = serve_instance[1]
    settings.VLINDERS_USAGE_SPOOL_DIR = module_dir / "usage-spool"
    settings.VLINDERS_REDIS_PREFIX = f"vltest:deploy:{module_dir.name}:"
    return settings


@pytest.fixture
def serve(ray_settings, serve_instance) -> RayDashboardClient:  # type: ignore[no-untyped-def]
    return serve_instance[0]
