"""Writes of contract 1: apply the rendered catalog to Ray Serve and reconcile what Ray reports.

- ``deployment_apply`` renders the whole Serve config, records a ``DeploymentRevision``
  (``pending``), sends it with ``PUT /api/serve/applications/`` and records the outcome. Ray
  validates a config before it changes anything, so a refused config (400) or an unreachable
  dashboard leaves the previous revision serving; the revision is recorded ``failed`` with the
  reason, and nothing is raised to the caller (a Celery task or a command reports it).
- ``deployment_reconcile`` reads ``GET /api/serve/applications/`` and writes one
  ``ModelDeploymentStatus`` per catalog model, from the model's own application (named by its
  deployment name, like its one deployment). An unreachable dashboard marks every model
  ``unknown`` (never ``running``) with the reason.
- ``deployment_wait`` polls until Ray finished deploying a revision (``serve apply --wait``).

Ray's statuses -> ours: a deployment ``UPDATING`` -> deploying; ``HEALTHY``, ``UPSCALING``,
``DOWNSCALING`` -> running; ``UNHEALTHY`` -> unhealthy; ``DEPLOY_FAILED`` -> failed. A model with
no deployment in Ray is ``absent`` — unless its application is ``DEPLOYING`` (still being
built: deploying) or ``DEPLOY_FAILED`` (the builder failed: failed, with Ray's message). The
revision Ray reports is the gateway's: its routing config carries it.

Each reconcile also adds the replicas seen running since the previous one to the model's
replica-hours (``inference.replica_hours``), from the status row as it was before this write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from inference import replica_hours, upstream_secrets
from inference.deployment import (
    APP_NAME,
    GATEWAY_DEPLOYMENT,
    config_revision,
    deployment_name,
    model_applications,
    render_serve_config,
    sha256_hex,
)
from inference.models import CatalogModel, DeploymentRevision, EngineKind, ModelDeploymentStatus
from inference.ray_client import MAX_MESSAGE_CHARS, RayDashboardClient, RayDashboardError
from tenants.audit import audit_record

logger = logging.getLogger(__name__)

State = ModelDeploymentStatus.State

_DEPLOYMENT_STATES = {
    "UPDATING": State.DEPLOYING,
    "HEALTHY": State.RUNNING,
    "UPSCALING": State.RUNNING,
    "DOWNSCALING": State.RUNNING,
    "UNHEALTHY": State.UNHEALTHY,
    "DEPLOY_FAILED": State.FAILED,
}
# Application statuses after which waiting for a deploy ends.
FINISHED_APP_STATUSES = frozenset({"RUNNING", "DEPLOY_FAILED", "UNHEALTHY"})


def _short(text: str) -> str:
    text = (text or "").strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + " […]"


def deployment_apply(
    *,
    applied_by: User | None = None,
    config: dict[str, Any] | None = None,
    rolled_back_to: DeploymentRevision | None = None,
) -> DeploymentRevision:
    """Apply the catalog (or ``config``, e.g. a recorded revision's config to roll back to) and
    return the recorded revision: ``applied`` if Ray accepted it, ``failed`` otherwise.

    The outcome is written to the audit log with the revision, as a platform-level record:
    ``deployment.applied``, or ``deployment.rolled_back`` when ``rolled_back_to`` names the
    earlier revision whose config this is (``inference.rollouts.revision_rollback``)."""
    if config is None:
        config = render_serve_config()
    try:
        # Upstream keys are not in the config: make sure the model servers find theirs.
        upstream_secrets.upstream_credentials_publish_all()
    except (redis.RedisError, OSError) as exc:
        logger.warning("Upstream credentials not published before the apply: %s", exc)
    record = DeploymentRevision.objects.create(
        revision=config_revision(config),
        config_hash=sha256_hex(config),
        config=config,
        applied_by=applied_by,
    )
    try:
        RayDashboardClient.from_settings().put_applications(config)
    except RayDashboardError as exc:
        record.outcome = DeploymentRevision.Outcome.FAILED
        record.error = _short(str(exc))
        logger.warning("Deployment revision %s failed: %s", record.revision[:12], record.error)
    else:
        record.outcome = DeploymentRevision.Outcome.APPLIED
        logger.info("Deployment revision %s applied", record.revision[:12])
    record.finished_at = timezone.now()
    with transaction.atomic():
        record.save(update_fields=["outcome", "error", "finished_at"])
        audit_record(
            organization=None,
            actor=applied_by,
            action="deployment.rolled_back" if rolled_back_to else "deployment.applied",
            target=record,
            after={
                "revision": record.revision,
                "outcome": record.outcome,
                "error": record.error,
                **({"rolled_back_to": rolled_back_to.pk} if rolled_back_to else {}),
            },
        )
    return record


def _application(details: dict[str, Any] | None, name: str = APP_NAME) -> dict[str, Any] | None:
    app = ((details or {}).get("applications") or {}).get(name)
    return app if isinstance(app, dict) else None


def deployed_revision(app: dict[str, Any] | None) -> str:
    """The revision of the routing config Ray deployed to the gateway application (``app``: the
    gateway's entry of ``GET /api/serve/applications/``; empty when there is none)."""
    if not app:
        return ""
    return config_revision({"applications": [app.get("deployed_app_config") or {}]})


def _observed_state(
    details: dict[str, Any], model: CatalogModel, name: str
) -> tuple[str, int, int, str]:
    """A catalog model's state as Ray reports it. An ``openai`` model has no application of its
    own (the gateway calls the upstream in its own process, docs/deployment-spec.md): it is as
    up as the gateway while active, and has no replicas of its own (so no replica-hours)."""
    if model.engine_kind == EngineKind.OPENAI and model.status == CatalogModel.Status.ACTIVE:
        state, _, _, message = _model_state(_application(details), GATEWAY_DEPLOYMENT)
        return state, 0, 0, message
    return _model_state(_application(details, name), name)


def _model_state(app: dict[str, Any] | None, name: str) -> tuple[str, int, int, str]:
    """(state, replicas running, replicas target, message) of the model application and
    deployment ``name``."""
    if app is None:
        return State.ABSENT, 0, 0, "Not deployed (not an active model of the applied revision)."
    app_status = str(app.get("status") or "")
    if app_status == "DELETING":
        return State.ABSENT, 0, 0, "The application is being deleted."
    deployment = (app.get("deployments") or {}).get(name)
    if not isinstance(deployment, dict):
        if app_status in ("DEPLOYING", "NOT_STARTED"):
            return State.DEPLOYING, 0, 0, "The application is being built."
        if app_status == "DEPLOY_FAILED":
            return State.FAILED, 0, 0, _short(str(app.get("message") or ""))
        return State.ABSENT, 0, 0, "Not deployed (not an active model of the applied revision)."
    status = str(deployment.get("status") or "")
    state = _DEPLOYMENT_STATES.get(status, State.DEPLOYING)
    replicas = deployment.get("replicas") or []
    running = sum(1 for replica in replicas if replica.get("state") == "RUNNING")
    target = int(deployment.get("target_num_replicas") or 0)
    return state, running, target, _short(str(deployment.get("message") or ""))


def _record_deploy_failure(details: dict[str, Any]) -> None:
    """Ray accepted a revision but could not deploy it (e.g. a builder raised): the newest
    record of that revision, if ``applied``, becomes ``failed`` with Ray's messages."""
    revision = deployed_revision(_application(details))
    latest = DeploymentRevision.objects.filter(revision=revision).first() if revision else None
    if latest is None or latest.outcome != DeploymentRevision.Outcome.APPLIED:
        return
    failed = [
        f"{name}: {app.get('message') or ''}"
        for name, app in ((details.get("applications") or {}).items())
        if isinstance(app, dict)
        and app.get("status") == "DEPLOY_FAILED"
        and (name == APP_NAME or name in model_applications(latest.config))
    ]
    if failed:
        latest.outcome = DeploymentRevision.Outcome.FAILED
        latest.error = _short("Ray could not deploy it: " + "; ".join(failed))
        latest.save(update_fields=["outcome", "error"])


def deployment_reconcile() -> list[ModelDeploymentStatus]:
    """Store Ray's view of every catalog model's deployment; return the rows, by model name."""
    try:
        details: dict[str, Any] | None = RayDashboardClient.from_settings().get_applications()
        error = ""
    except RayDashboardError as exc:
        details, error = None, _short(str(exc))
        logger.warning("Reconcile: %s", error)

    revision = deployed_revision(_application(details))
    rows = []
    with transaction.atomic():
        # The rows as last observed (locked): each model's replicas since then become
        # replica-hours (inference/replica_hours.py).
        previous = replica_hours.previous_observations()
        for model in CatalogModel.objects.order_by("name"):
            name = deployment_name(model.name)
            if details is None:
                values: dict[str, Any] = {
                    "state": State.UNKNOWN,
                    "replicas_running": 0,
                    "message": error,
                }
            else:
                state, running, target, message = _observed_state(details, model, name)
                values = {
                    "state": state,
                    "replicas_running": running,
                    "replicas_target": target,
                    "message": message,
                    "revision": revision,
                }
            row, _ = ModelDeploymentStatus.objects.update_or_create(
                catalog_model=model, defaults={"deployment": name, **values}
            )
            replica_hours.accumulate(
                model_id=model.pk, previous=previous.get(model.pk), now=row.updated_at
            )
            rows.append(row)
        if details is not None:
            _record_deploy_failure(details)
    return rows


def deployment_wait(
    *,
    revision: str,
    timeout: float,
    poll_interval: float = 1.0,
    on_poll: Callable[[str], None] | None = None,
) -> str:
    """Poll Ray until the gateway runs ``revision`` and every application of that revision
    finished deploying; return ``RUNNING``, or ``DEPLOY_FAILED``/``UNHEALTHY`` if any did, or
    ``"TIMEOUT"``.

    ``on_poll`` is called with each status seen (``"UNREACHABLE"`` while the dashboard does not
    answer)."""
    client = RayDashboardClient.from_settings()
    deadline = time.monotonic() + timeout
    record = DeploymentRevision.objects.filter(revision=revision).first()
    models = model_applications(record.config) if record is not None else []
    while True:
        try:
            details = client.get_applications()
            status = _revision_status(details, revision, models)
            if status in FINISHED_APP_STATUSES:
                return status
        except RayDashboardError:
            status = "UNREACHABLE"
        if on_poll is not None:
            on_poll(status)
        if time.monotonic() >= deadline:
            return "TIMEOUT"
        time.sleep(poll_interval)


def _revision_status(details: dict[str, Any], revision: str, models: list[str]) -> str:
    """One status for a revision's applications: the worst finished one once all finished,
    else the first unfinished one's (``ABSENT`` for one Ray does not list yet)."""
    gateway = _application(details)
    if deployed_revision(gateway) != revision:
        return str(gateway.get("status") or "ABSENT") if gateway else "ABSENT"
    statuses = []
    for name in [APP_NAME, *models]:
        app = _application(details, name)
        status = str(app.get("status") or "") if app else "ABSENT"
        if status not in FINISHED_APP_STATUSES:
            return status
        statuses.append(status)
    for worst in ("DEPLOY_FAILED", "UNHEALTHY"):
        if worst in statuses:
            return worst
    return "RUNNING"
