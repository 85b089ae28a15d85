"""``manage.py serve render|apply|status``: the catalog on Ray Serve (docs/operations.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference import deploy_services
from inference.deployment import KUBERAY_IMAGE, render_kuberay, render_serve_config, to_yaml
from inference.models import DeploymentRevision, ModelDeploymentStatus


class Command(BaseCommand):
    help = (
        "Render the catalog into a Ray Serve config (render), apply it through the Ray "
        "dashboard (apply), or show what Ray reports per model (status)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        render = actions.add_parser("render", help="Print the Serve config (JSON) or --kuberay.")
        render.add_argument(
            "--kuberay",
            action="store_true",
            help="Print a KubeRay RayService manifest (YAML) whose serveConfigV2 is the config.",
        )
        render.add_argument("--output", "-o", help="Write to this file instead of stdout.")
        render.add_argument("--name", default="vlinders", help="RayService name (--kuberay).")
        render.add_argument("--namespace", default=None, help="Namespace (--kuberay).")
        render.add_argument("--image", default=None, help="Ray+Vlinders image (--kuberay).")

        apply = actions.add_parser("apply", help="Apply the catalog to Ray Serve.")
        apply.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="Wait up to SECONDS until Ray runs the revision (or failed to), then show "
            "each model's status.",
        )

        actions.add_parser("status", help="Poll Ray now and show each model's deployment.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "render":
            self._render(**options)
        elif action == "apply":
            self._apply(wait=options["wait"])
        else:
            self._status()

    def _render(
        self,
        *,
        kuberay: bool,
        output: str | None,
        name: str,
        namespace: str | None,
        image: str | None,
        **options: Any,
    ) -> None:
        if kuberay:
            manifest = render_kuberay(name=name, namespace=namespace, image=image or KUBERAY_IMAGE)
            text = to_yaml(manifest)
        else:
            text = json.dumps(render_serve_config(), indent=2) + "\n"
        if output:
            Path(output).write_text(text)
            self.stderr.write(f"Wrote {output}")
        else:
            self.stdout.write(text, ending="")

    def _apply(self, *, wait: float) -> None:
        record = deploy_services.deployment_apply()
        self.stdout.write(
            f"Revision {record.revision[:12]} (#{record.pk}) to "
            f"{settings.VLINDERS_RAY_DASHBOARD_URL}: {record.outcome}"
        )
        if record.outcome != DeploymentRevision.Outcome.APPLIED:
            raise CommandError(f"Apply failed; Ray keeps the previous revision. {record.error}")
        if wait <= 0:
            return
        seen: list[str] = []

        def report(status: str) -> None:
            if not seen or seen[-1] != status:
                self.stdout.write(f"  Ray: {status}")
            seen.append(status)

        status = deploy_services.deployment_wait(
            revision=record.revision, timeout=wait, on_poll=report
        )
        self.stdout.write(f"Application: {status}")
        self._write_rows(deploy_services.deployment_reconcile())
        if status != "RUNNING":
            record.refresh_from_db()
            detail = f" {record.error}" if record.error else ""
            raise CommandError(f"Revision {record.revision[:12]} is not running: {status}.{detail}")

    def _status(self) -> None:
        latest = DeploymentRevision.objects.first()
        if latest is None:
            self.stdout.write("No revision applied yet.")
        else:
            self.stdout.write(
                f"Latest apply: {latest.revision[:12]} (#{latest.pk}) {latest.outcome} "
                f"at {latest.created_at:%Y-%m-%d %H:%M:%S}"
                + (f": {latest.error}" if latest.error else "")
            )
        self._write_rows(deploy_services.deployment_reconcile())

    def _write_rows(self, rows: list[ModelDeploymentStatus]) -> None:
        if not rows:
            self.stdout.write("The catalog has no models.")
            return
        width = max(len(row.catalog_model.name) for row in rows)
        self.stdout.write(f"{'MODEL':<{width}}  {'STATE':<9}  REPLICAS  REVISION      MESSAGE")
        for row in rows:
            replicas = f"{row.replicas_running}/{row.replicas_target}"
            message = _one_line(row.message)
            self.stdout.write(
                f"{row.catalog_model.name:<{width}}  {row.state:<9}  {replicas:<8}  "
                f"{row.revision[:12]:<12}  {message}"
            )


def _one_line(message: str) -> str:
    """A message's gist: the exception line of a traceback, else the first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]
