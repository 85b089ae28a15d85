"""``manage.py run_ray``: the data plane on this machine, as one foreground process.

Starts a local Ray head (``inference.ray_local.LocalRay``: token auth, Serve's high-throughput
mode, GCS on 6390 because 6379 is Redis's), waits for its dashboard, applies the catalog, prints
where the gateway listens, and blocks until Ray ends. SIGTERM or SIGINT stops exactly this
cluster. The token is ``inference.ray_client.ray_auth_token()`` — the one ``serve apply`` and the
Celery tasks send — or, when none is configured, one generated into
``settings.VLINDERS_RAY_AUTH_TOKEN_FILE`` (mode 0600). A process manager runs it as one entry:
``ray: .venv/bin/python manage.py run_ray``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.deploy_services import deployment_apply
from inference.ray_client import ensure_ray_auth_token
from inference.ray_local import LocalRay


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


class Command(BaseCommand):
    help = (
        "Run a local Ray head with Ray Serve, apply the catalog to it and block until it ends "
        "(SIGTERM/SIGINT stop it cleanly)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        dashboard = urlsplit(str(settings.VLINDERS_RAY_DASHBOARD_URL))
        parser.add_argument(
            "--gcs-port", type=int, default=6390, help="Ray's GCS port (6379 is Redis's)."
        )
        parser.add_argument(
            "--dashboard-port",
            type=int,
            default=dashboard.port or 8265,
            help="The dashboard's port (default: the port of VLINDERS_RAY_DASHBOARD_URL).",
        )
        parser.add_argument(
            "--num-cpus",
            type=int,
            default=max(4, os.cpu_count() or 1),
            help="Logical CPUs Ray schedules replicas against (default: the cores, at least 4: "
            "on a small machine the gateway and the demo models' replicas share the cores).",
        )
        parser.add_argument("--temp-dir", default=None, help="Ray's session and log folder.")
        parser.add_argument(
            "--no-apply", action="store_true", help="Start Ray without applying the catalog."
        )
        parser.add_argument(
            "--start-timeout", type=float, default=120.0, help="Seconds to wait for the dashboard."
        )

    def handle(
        self,
        *args: Any,
        gcs_port: int,
        dashboard_port: int,
        num_cpus: int | None,
        temp_dir: str | None,
        no_apply: bool,
        start_timeout: float,
        **options: Any,
    ) -> None:
        host = urlsplit(str(settings.VLINDERS_RAY_DASHBOARD_URL)).hostname
        if host not in ("127.0.0.1", "localhost", None):
            self.stderr.write(
                f"Warning: VLINDERS_RAY_DASHBOARD_URL points at {host}; this command starts Ray "
                "on 127.0.0.1."
            )
        cluster = LocalRay(
            token=ensure_ray_auth_token(),
            gcs_port=gcs_port,
            dashboard_port=dashboard_port,
            num_cpus=num_cpus,
            temp_dir=temp_dir,
            env={
                "VLINDERS_KEY_PEPPER": settings.VLINDERS_KEY_PEPPER,
                "VLINDERS_METRICS_TOKEN": settings.VLINDERS_METRICS_TOKEN,
                # Opens the upstream API keys the control plane publishes to Redis, encrypted.
                "VLINDERS_SECRETS_KEY": settings.VLINDERS_SECRETS_KEY,
                "VLINDERS_METRICS_TENANT_LABELS": settings.VLINDERS_METRICS_TENANT_LABELS,
            },
            # Gateway replicas record Prometheus metrics here, so /metrics sums all of them.
            metrics_dir=str(Path(settings.VAR_DIR) / "ray-metrics"),
        )
        log_path = Path(settings.VAR_DIR) / "ray-start.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.stdout.write(
                f"Starting Ray (GCS 127.0.0.1:{gcs_port}, dashboard {cluster.dashboard_url}); "
                f"its output goes to {log_path}."
            )
            try:
                cluster.start(timeout=start_timeout, log_path=str(log_path))
            except (RuntimeError, TimeoutError) as exc:
                raise CommandError(f"Ray did not start: {exc}. See {log_path}.") from exc
            self.stdout.write(self.style.SUCCESS(f"Ray is up; dashboard {cluster.dashboard_url}."))
            if not no_apply:
                self._apply()
            gateway = f"http://{settings.VLINDERS_GATEWAY_HOST}:{settings.VLINDERS_GATEWAY_PORT}"
            self.stdout.write(f"The gateway (OpenAI-compatible API) listens on {gateway}/v1")
            code = cluster.wait()
            raise CommandError(f"Ray exited by itself with status {code}. See {log_path}.")
        except _Stop as stop:
            self.stdout.write(f"{stop}: stopping Ray.")
        finally:
            # A second signal while stopping must not leave Ray's processes behind.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            cluster.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("Ray stopped.")

    def _apply(self) -> None:
        record = deployment_apply()
        if record.outcome == record.Outcome.APPLIED:
            self.stdout.write(
                f"Applied revision {record.revision[:12]} (#{record.pk}); Ray deploys it now "
                "(manage.py serve status)."
            )
        else:
            self.stderr.write(
                f"Applying revision {record.revision[:12]} (#{record.pk}) failed: {record.error}"
            )
