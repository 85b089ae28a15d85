"""A real local Ray cluster for the tests, shared by the whole session (starting one costs
seconds and a gigabyte), on free ports so it never collides with a developer's own cluster."""

from __future__ import annotations

import secrets
import socket
import tempfile
from collections.abc import Iterator

import pytest

from inference.ray_local import LocalRay

METRICS_TOKEN = secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def serve_port() -> int:
    """The one HTTP port of Serve for the session: Serve fixes it when it first starts, so every
    test module that deploys on ``ray_cluster`` uses this one (no restart of Serve between)."""
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalRay]:
    """A running head node with token auth and Serve's high-throughput mode.

    The pepper of the test settings is passed in the cluster's environment, as the bring-up
    command does, so gateways hash keys exactly as the control plane does.
    """
    from django.conf import settings

    temp_dir = tempfile.mkdtemp(prefix="vl-ray-")
    cluster = LocalRay(
        token=secrets.token_hex(32),
        gcs_port=free_port(),
        dashboard_port=free_port(),
        num_cpus=8,  # logical CPUs: replicas are light; the machine has 2 real cores
        temp_dir=temp_dir,
        env={
            "VLINDERS_KEY_PEPPER": settings.VLINDERS_KEY_PEPPER,
            "VLINDERS_SECRETS_KEY": settings.VLINDERS_SECRETS_KEY,
            "VLINDERS_METRICS_TOKEN": METRICS_TOKEN,
        },
        metrics_dir=f"{temp_dir}/metrics",
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
    )
    cluster.start(log_path=f"{temp_dir}/ray-start.log")
    try:
        yield cluster
    finally:
        cluster.stop()
