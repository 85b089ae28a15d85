"""Scheduled scaling: per-model minimum replicas by time of day (the seed's night-time
scale-down, or a warm replica during business hours).

A model's ``ScalingWindow`` rows say: between ``starts_at`` and ``ends_at``, in the platform's
time zone (``TIME_ZONE``), keep at least ``min_replicas`` replicas instead of the catalog's own
``min_replicas``. A window covers ``starts_at <= t < ends_at``; one whose ``ends_at`` is earlier
than its ``starts_at`` wraps past midnight (22:00-06:00 covers 23:30 and 05:59, not 06:00); one
whose ends equal its start covers the whole day. When several windows of one model cover the
same moment, the largest minimum wins: overlapping windows never scale a model below what any of
them asks for (and the order they were written in does not matter).

:func:`scaling_schedule_apply` (every minute, from beat: ``inference.apply_scaling_schedule``)
computes each active model's scheduled minimum for now, stores it as
``CatalogModel.scheduled_min_replicas`` (``None`` outside every window) for the models whose
value changes, writes one audit record per changed model (``catalog_model.schedule_applied``),
and then applies the whole catalog to Ray once, through the same path as any catalog change
(``inference.deploy_services.deployment_apply``). Scaling is a deployment option that Serve
applies in place, so no replica restarts (docs/deployment-spec.md, "Scheduled scaling"). A run
that changes nothing applies nothing, so running it again at the same time is a no-op.

Rules of a window (:func:`scaling_window_validate`; the admin's inline checks them too):
``min_replicas`` at most the model's ``max_replicas``; 0 only for a model with
``scale_to_zero``. The renderer keeps what it sends valid even if the model changed since
(``inference.deployment.render_scaling``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from inference.deploy_services import deployment_apply
from inference.models import CatalogModel, DeploymentRevision, ScalingWindow
from tenants.audit import audit_record

logger = logging.getLogger(__name__)

AUDIT_ACTION = "catalog_model.schedule_applied"
WINDOWS_SET_ACTION = "catalog_model.schedule_set"


def window_covers(*, starts_at: time, ends_at: time, at: time) -> bool:
    """Whether the window ``[starts_at, ends_at)`` covers the time of day ``at``: wrapping past
    midnight when ``ends_at < starts_at``, the whole day when they are equal."""
    if starts_at == ends_at:
        return True
    if starts_at < ends_at:
        return starts_at <= at < ends_at
    return at >= starts_at or at < ends_at


def scheduled_min_replicas(windows: Iterable[ScalingWindow], *, at: time) -> int | None:
    """The minimum replicas the windows ask for at ``at`` (the largest of those that cover it),
    or ``None`` when none covers it (the catalog's own ``min_replicas`` applies)."""
    covering = [
        window.min_replicas
        for window in windows
        if window_covers(starts_at=window.starts_at, ends_at=window.ends_at, at=at)
    ]
    return max(covering) if covering else None


def local_time(now: datetime | None = None) -> time:
    """The platform's time of day (``TIME_ZONE``) at ``now`` (default: the current time); an
    aware ``now`` in any zone is converted first."""
    moment = timezone.localtime(now) if now is not None else timezone.localtime()
    return moment.time().replace(tzinfo=None)


def scaling_window_validate(*, window: ScalingWindow) -> None:
    """The rules of a window (see the module), as a ``ValidationError`` naming the field."""
    model = window.catalog_model
    errors: dict[str, list[str]] = {}
    if window.min_replicas is not None and model is not None:
        if window.min_replicas > model.max_replicas:
            errors.setdefault("min_replicas", []).append(
                f"Must not exceed the model's max_replicas ({model.max_replicas}); "
                f"got {window.min_replicas}."
            )
        if window.min_replicas == 0 and not model.scale_to_zero:
            errors.setdefault("min_replicas", []).append(
                "0 replicas means scaling to zero: only for a model with scale_to_zero."
            )
    if errors:
        raise ValidationError(errors)


def _window_state(window: ScalingWindow) -> dict[str, Any]:
    return {
        "starts_at": window.starts_at.isoformat(timespec="minutes"),
        "ends_at": window.ends_at.isoformat(timespec="minutes"),
        "min_replicas": window.min_replicas,
    }


def scaling_windows_set(
    *, model: CatalogModel, windows: Iterable[Mapping[str, Any]], actor: Any
) -> list[ScalingWindow]:
    """Make ``windows`` (each ``starts_at``, ``ends_at``, ``min_replicas``) the model's whole
    schedule (windows not listed are removed), validated (see the module; all rows checked
    before anything is written), with one audit record (``catalog_model.schedule_set``). The
    beat task applies it within a minute; nothing is sent to Ray here."""
    rows = [
        ScalingWindow(
            catalog_model=model,
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
            min_replicas=row["min_replicas"],
        )
        for row in windows
    ]
    for row in rows:
        scaling_window_validate(window=row)
    with transaction.atomic():
        existing = list(ScalingWindow.objects.filter(catalog_model=model))
        before = [_window_state(window) for window in existing]
        ScalingWindow.objects.filter(catalog_model=model).delete()
        ScalingWindow.objects.bulk_create(rows)
        after = [_window_state(window) for window in rows]
        if before != after:
            audit_record(
                organization=None,
                actor=actor,
                action=WINDOWS_SET_ACTION,
                target=model,
                before={"name": model.name, "scaling_windows": before},
                after={"name": model.name, "scaling_windows": after},
            )
    return rows


@dataclass(frozen=True)
class ScheduleOutcome:
    """What a run did: the models whose scheduled minimum changed (name -> (before, after)),
    and the revision of the one apply (``None`` when nothing changed: nothing was applied)."""

    changed: dict[str, tuple[int | None, int | None]]
    revision: DeploymentRevision | None

    @property
    def applied(self) -> bool:
        return (
            self.revision is not None
            and self.revision.outcome == DeploymentRevision.Outcome.APPLIED
        )


def scaling_schedule_apply(*, now: datetime | None = None) -> ScheduleOutcome:
    """Store every active model's scheduled minimum for ``now`` (default: the current time)
    where it changed, with an audit record each, then apply the catalog to Ray once if anything
    changed. An apply that fails is recorded in its revision (and logged), not raised: the
    stored minimum is the desired state, and the next apply sends it."""
    at = local_time(now)
    changed: dict[str, tuple[int | None, int | None]] = {}
    with transaction.atomic():
        models = (
            CatalogModel.objects.select_for_update()
            .filter(status=CatalogModel.Status.ACTIVE)
            .prefetch_related("scaling_windows")
            .order_by("name")
        )
        for model in models:
            wanted = scheduled_min_replicas(model.scaling_windows.all(), at=at)
            before = model.scheduled_min_replicas
            if wanted == before:
                continue
            model.scheduled_min_replicas = wanted
            model.save(update_fields=["scheduled_min_replicas", "updated_at"])
            audit_record(
                organization=None,
                actor=None,
                action=AUDIT_ACTION,
                target=model,
                before={"name": model.name, "scheduled_min_replicas": before},
                after={
                    "name": model.name,
                    "scheduled_min_replicas": wanted,
                    "at": at.isoformat(timespec="minutes"),
                },
            )
            changed[model.name] = (before, wanted)
    if not changed:
        return ScheduleOutcome(changed={}, revision=None)
    revision = deployment_apply(applied_by=None)
    if revision.outcome != DeploymentRevision.Outcome.APPLIED:
        logger.warning("Scheduled scaling of %s: the apply failed: %s", changed, revision.error)
    return ScheduleOutcome(changed=changed, revision=revision)
