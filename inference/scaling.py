"""Scale a catalog model: the operator's answer to the seed's cluster scale API.

:func:`catalog_model_scale` is the one service behind the console's Cluster page and
``POST /api/v1/models/{name}/scale/``. It takes either a fixed replica count or autoscaling
bounds, stores them as the catalog's scaling fields (``min_replicas``, ``max_replicas``,
``scale_to_zero``) through ``inference.services.catalog_model_update`` — so every catalog rule
applies, with the same messages — writes an audit record, and then applies the whole catalog to
Ray (``inference.deploy_services.deployment_apply``) so the change reaches Serve at once. Scaling
travels as deployment options, so Ray changes the replica count in place: no replica restarts
(docs/deployment-spec.md).

The change is stored even when the apply fails (Ray unreachable, config refused): the catalog is
the desired state, and the next apply (console, ``manage.py serve apply``, a task) sends it. The
outcome says which: ``revision.outcome`` is ``applied`` or ``failed`` with Ray's reason.

Rules of a scale request: either ``fixed`` (a count, 1 or more: min and max both become it) or
``min_replicas`` and ``max_replicas`` (autoscaling between them), never both, each at most
``MAX_REPLICAS_LIMIT``; then the catalog's own rules (``inference.services``), with its messages:
``min_replicas <= max_replicas``, ``max_replicas`` at least 1, and ``min_replicas`` 0 (scaling
to zero) only with ``scale_to_zero`` said as well.

A capacity note compares what ``max_replicas`` replicas ask for (``replica_cpus``,
``replica_gpus`` each) with the cluster's CPUs and GPUs; it warns, it does not refuse (Ray keeps
extra replicas pending until a node can take them, and a cluster's autoscaler may add one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from inference import services
from inference.cluster import READ_TIMEOUT_S, as_dict
from inference.deploy_services import deployment_apply
from inference.models import CatalogModel, DeploymentRevision
from inference.ray_client import RayDashboardClient, RayDashboardError
from tenants.audit import audit_record, fields_of

logger = logging.getLogger(__name__)

SCALING_FIELDS = ("min_replicas", "max_replicas", "scale_to_zero")
# Far above any real cluster; keeps a typo (10000) from reaching Ray.
MAX_REPLICAS_LIMIT = 1000
AUDIT_ACTION = "catalog_model.scaled"


@dataclass(frozen=True)
class ScaleOutcome:
    """What a scale did: the model as stored, the revision the apply recorded (``applied`` or
    ``failed``), and the capacity note."""

    model: CatalogModel
    revision: DeploymentRevision
    capacity_note: str

    @property
    def applied(self) -> bool:
        return self.revision.outcome == DeploymentRevision.Outcome.APPLIED


def scale_request_validate(
    *,
    min_replicas: int | None,
    max_replicas: int | None,
    fixed: int | None,
    scale_to_zero: bool,
) -> tuple[int, int, bool]:
    """The ``(min_replicas, max_replicas, scale_to_zero)`` a request asks for, or a
    ``ValidationError`` naming the fields (all problems at once)."""
    errors: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    for name, value in (
        ("fixed", fixed),
        ("min_replicas", min_replicas),
        ("max_replicas", max_replicas),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            add(name, "Must be a whole number.")
        elif value is not None and value > MAX_REPLICAS_LIMIT:
            add(name, f"At most {MAX_REPLICAS_LIMIT}.")
    if errors:
        raise ValidationError(errors)
    if fixed is not None:
        if min_replicas is not None or max_replicas is not None:
            add("fixed", "Give either a fixed count or min_replicas and max_replicas, not both.")
        if fixed < 1:
            add("fixed", "At least 1 (to scale to zero, autoscale with min_replicas 0).")
        if scale_to_zero:
            add("scale_to_zero", "A fixed count never scales to zero.")
        if errors:
            raise ValidationError(errors)
        return fixed, fixed, False
    if min_replicas is None or max_replicas is None:
        for name, value in (("min_replicas", min_replicas), ("max_replicas", max_replicas)):
            if value is None:
                add(name, "Required (or give a fixed count).")
        raise ValidationError(errors)
    # min <= max, at least 0 and 1, and scale to zero said twice: the catalog's own rules,
    # checked (with the catalog's messages) when the fields are stored.
    return min_replicas, max_replicas, scale_to_zero


def _num(value: Decimal) -> str:
    """``3`` for 3.00, ``0.5`` for 0.50."""
    return format(value.normalize(), "f")


def capacity_note(*, model: CatalogModel, max_replicas: int) -> str:
    """Whether ``max_replicas`` replicas of ``model`` fit the cluster's CPUs and GPUs (a
    sentence; never raises)."""
    cpus = Decimal(model.replica_cpus) * max_replicas
    gpus = Decimal(model.replica_gpus) * max_replicas
    replicas = "1 replica asks" if max_replicas == 1 else f"{max_replicas} replicas ask"
    need = f"{replicas} for {_num(cpus)} CPU"
    if gpus:
        need += f" and {_num(gpus)} GPU"
    try:
        client = RayDashboardClient.from_settings(timeout=READ_TIMEOUT_S)
        nodes = client.get_nodes_summary()
    except RayDashboardError as exc:
        return f"{need}; the cluster's capacity is unknown ({exc})."
    total_cpus = Decimal(0)
    total_gpus = Decimal(0)
    for node in nodes:
        raylet = as_dict(node.get("raylet"))
        if raylet.get("state") != "ALIVE":
            continue
        resources = as_dict(raylet.get("resourcesTotal"))
        total_cpus += Decimal(str(resources.get("CPU", 0)))
        total_gpus += Decimal(str(resources.get("GPU", 0)))
    have = f"the cluster has {_num(total_cpus)} CPU and {_num(total_gpus)} GPU"
    if cpus > total_cpus or gpus > total_gpus:
        return (
            f"{need}, more than {have} in all: replicas that do not fit stay pending until a node "
            "can take them."
        )
    return f"{need}; {have} in all (shared with the other deployments)."


def catalog_model_scale(
    *,
    model: CatalogModel,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    fixed: int | None = None,
    scale_to_zero: bool = False,
    actor: Any,
) -> ScaleOutcome:
    """Store ``model``'s new scaling (validated: see the module) with an audit record, then apply
    the catalog to Ray. Raises ``ValidationError`` (nothing stored, nothing applied) for a bad
    request; an apply that fails is reported in the outcome, not raised."""
    low, high, to_zero = scale_request_validate(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        fixed=fixed,
        scale_to_zero=scale_to_zero,
    )
    with transaction.atomic():
        locked = CatalogModel.objects.select_for_update().get(pk=model.pk)
        before = fields_of(locked, SCALING_FIELDS)
        services.catalog_model_update(
            model=locked, min_replicas=low, max_replicas=high, scale_to_zero=to_zero
        )
        audit_record(
            organization=None,
            actor=actor,
            action=AUDIT_ACTION,
            target=locked,
            before={"name": locked.name, **before},
            after={"name": locked.name, **fields_of(locked, SCALING_FIELDS)},
        )
    for name in SCALING_FIELDS:  # the caller's instance shows what was stored
        setattr(model, name, getattr(locked, name))
    revision = deployment_apply(applied_by=actor if getattr(actor, "pk", None) else None)
    if revision.outcome != DeploymentRevision.Outcome.APPLIED:
        logger.warning(
            "Scaled %s to %s..%s; the apply failed: %s", model.name, low, high, revision.error
        )
    return ScaleOutcome(
        model=locked,
        revision=revision,
        capacity_note=capacity_note(model=locked, max_replicas=high),
    )
