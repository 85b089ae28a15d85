"""Celery tasks of the tenants app."""

from __future__ import annotations

from celery import shared_task

from tenants import snapshot


@shared_task(name="tenants.republish_access_snapshot", ignore_result=True)
def republish_access_snapshot() -> dict[str, int]:
    """Periodic full republish: repairs a Redis that restarted empty or missed a publish."""
    result = snapshot.publish_full()
    return {"organizations": result.organizations, "keys": result.keys, "removed": result.removed}


@shared_task(name="tenants.ensure_access_snapshot", ignore_result=True)
def ensure_access_snapshot() -> bool:
    """Frequent, cheap check: republish at once if Redis lost the snapshot."""
    return snapshot.ensure_published()
