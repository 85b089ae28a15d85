"""Celery tasks of the inference app: apply the catalog to Ray Serve, reconcile its status, and
republish the upstream API keys for the model servers."""

from __future__ import annotations

from celery import shared_task
from django.contrib.auth import get_user_model

from inference import deploy_services, scaling_schedule, upstream_secrets


@shared_task(name="inference.reconcile_deployments", ignore_result=True)
def reconcile_deployments() -> dict[str, int]:
    """Periodic (every 15 s): store Ray Serve's view of every catalog model's deployment."""
    rows = deploy_services.deployment_reconcile()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


@shared_task(name="inference.apply_deployment")
def apply_deployment(applied_by_id: int | None = None) -> dict[str, str | int]:
    """Render the catalog and apply it; the outcome is recorded, never raised."""
    user = None
    if applied_by_id is not None:
        user = get_user_model().objects.filter(pk=applied_by_id).first()
    record = deploy_services.deployment_apply(applied_by=user)
    return {"id": record.pk, "revision": record.revision, "outcome": record.outcome}


@shared_task(name="inference.publish_upstream_credentials", ignore_result=True)
def publish_upstream_credentials() -> dict[str, int]:
    """Periodic (``VLINDERS_UPSTREAM_CREDENTIALS_SECONDS``): rewrite the upstream API keys'
    Redis records and delete stale ones (a Redis that restarted empty, a publish lost to an
    outage); ``inference/upstream_secrets.py``."""
    result = upstream_secrets.upstream_credentials_publish_all()
    return {"published": result.published, "removed": result.removed}


@shared_task(name="inference.apply_scaling_schedule", ignore_result=True)
def apply_scaling_schedule() -> dict[str, int | str]:
    """Periodic (every minute): store each model's scheduled minimum replicas for the time of
    day and, when one changed, apply the catalog once (``inference/scaling_schedule.py``).
    Idempotent: a run that changes nothing applies nothing."""
    outcome = scaling_schedule.scaling_schedule_apply()
    revision = outcome.revision
    return {
        "changed": len(outcome.changed),
        "outcome": revision.outcome if revision is not None else "unchanged",
    }
