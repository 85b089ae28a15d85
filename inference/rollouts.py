"""The operator's view of deploys (docs/operator-console.md, "Deploy, revisions and rollback"):
what changed between two recorded revisions, a rollback to an earlier one, and the live rollout
as Ray reports it.

- ``config_diff(before, after)`` compares two Serve configs (``DeploymentRevision.config``) per
  model: models added and removed, and per changed model each field with its old and new value,
  marked ``restarts`` when the field is part of what the model's replicas start with (its
  application's ``args``: engine, source, engine arguments, resources) — every other change
  (prices, aliases, scaling, queue bounds) reaches Serve in place. Platform-wide fields (the
  gateway's settings, HTTP options) are compared apart. Credentials in URLs are masked.
- ``revision_history`` pairs each recorded revision with the one recorded just before it and
  their diff, and says when a revision re-applied an earlier one's config (a rollback).
- ``revision_rollback`` re-applies a recorded revision's config through
  ``deploy_services.deployment_apply`` (one path for every apply: the new attempt is recorded,
  with who asked and the outcome). Only a revision Ray once accepted can be rolled back to.
  The catalog is not changed: the next "apply the catalog" deploys the catalog again.
- ``rollout_read`` asks Ray (``GET /api/serve/applications/``, short timeout) for every
  application of the newest accepted revision and reports each model's replicas (starting,
  running, stopping against the target), Ray's messages, and whether the rollout has settled.
  It never raises for Ray's sake: an unreachable dashboard is reported in ``error``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.contrib.auth.models import User
from django.core.paginator import Page, Paginator

from inference.deploy_services import deployed_revision, deployment_apply
from inference.deployment import APP_NAME, GATEWAY_DEPLOYMENT, MODEL_IMPORT_PATH
from inference.models import DeploymentRevision
from inference.ray_client import RayDashboardClient, RayDashboardError

# How long the live view waits for Ray's dashboard: it is polled every second or two.
ROLLOUT_TIMEOUT_S = 3.0
# Ray's replica states (ray.serve._private.common.ReplicaState) in the view's three groups.
_RUNNING = frozenset({"RUNNING"})
_STOPPING = frozenset({"STOPPING"})
# Everything else (STARTING, UPDATING, RECOVERING, PENDING_MIGRATION) is on its way up.

# --- what changed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    """One field of a model (or of the platform) with its value before and after; ``""`` is
    shown as unset. ``restarts``: the model's replicas start again for it."""

    name: str
    before: str
    after: str
    restarts: bool = False


@dataclass(frozen=True)
class ModelChange:
    name: str
    changes: list[FieldChange]

    @property
    def restarts(self) -> bool:
        return any(change.restarts for change in self.changes)


@dataclass(frozen=True)
class ConfigDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[ModelChange] = field(default_factory=list)
    platform: list[FieldChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.platform)

    def summary(self) -> str:
        """One line: ``2 added (a, b); 1 removed (c); 1 changed (d)``, or ``no change``."""
        parts = []
        for label, names in (
            ("added", self.added),
            ("removed", self.removed),
            ("changed", [change.name for change in self.changed]),
        ):
            if names:
                parts.append(f"{len(names)} {label} ({', '.join(names)})")
        if self.platform:
            parts.append(f"platform settings changed ({len(self.platform)})")
        return "; ".join(parts) or "no change"


def _mask(value: str) -> str:
    """A URL's password replaced by ``***`` (Redis and broker URLs may carry one)."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return "***"
    if parts.password is None:
        return value
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    """Nested dicts as ``a.b.c`` keys; lists and scalars as text."""
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
        if not value and prefix:
            out[prefix] = ""
    else:
        out[prefix] = _text(value)


def _apps(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    apps = (config or {}).get("applications") or []
    return [app for app in apps if isinstance(app, dict)]


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    for deployment in app.get("deployments") or []:
        if isinstance(deployment, dict) and deployment.get("name") == name:
            return deployment
    return {}


# A model application's args that are the platform's (compared once, under "platform").
_PLATFORM_ARGS = frozenset({"spec_version", "name", "deployment", "redis_url", "redis_prefix"})
# The deployment options the view compares (everything else in them is derived or constant).
_OPTIONS = ("autoscaling_config", "max_ongoing_requests", "max_queued_requests")


def config_models(config: dict[str, Any] | None) -> dict[str, dict[str, tuple[str, bool]]]:
    """Each model of a Serve config (by its public name): its fields as text, each with whether
    changing it restarts the model's replicas."""
    models: dict[str, dict[str, tuple[str, bool]]] = {}
    gateway = next((app for app in _apps(config) if app.get("name") == APP_NAME), {})
    routes = (_deployment(gateway, GATEWAY_DEPLOYMENT).get("user_config") or {}).get("models")
    for route in routes or []:
        if isinstance(route, dict) and route.get("name"):
            flat: dict[str, str] = {}
            _flatten({k: v for k, v in route.items() if k != "name"}, "", flat)
            models[str(route["name"])] = {k: (v, False) for k, v in flat.items()}
    for app in _apps(config):
        if app.get("import_path") != MODEL_IMPORT_PATH:
            continue
        args = app.get("args") or {}
        name = str(args.get("name") or app.get("name"))
        fields = models.setdefault(name, {})
        flat = {}
        _flatten({k: v for k, v in args.items() if k not in _PLATFORM_ARGS}, "", flat)
        fields.update({k: (v, True) for k, v in flat.items()})
        deployment = _deployment(app, str(app.get("name")))
        options: dict[str, str] = {}
        _flatten({k: deployment.get(k) for k in _OPTIONS if k in deployment}, "", options)
        fields.update({k: (v, False) for k, v in options.items()})
    return models


def config_platform(config: dict[str, Any] | None) -> dict[str, str]:
    """The platform-wide fields of a Serve config: HTTP options, the gateway's start-up
    arguments and options, the Redis settings every model starts with."""
    flat: dict[str, str] = {}
    config = config or {}
    _flatten(config.get("http_options") or {}, "http_options", flat)
    for app in _apps(config):
        if app.get("name") == APP_NAME:
            _flatten(app.get("args") or {}, "gateway", flat)
            gateway = _deployment(app, GATEWAY_DEPLOYMENT)
            user_config = {k: v for k, v in (gateway.get("user_config") or {}).items()}
            user_config.pop("models", None)
            user_config.pop("revision", None)
            _flatten(user_config, "gateway", flat)
            _flatten(gateway.get("autoscaling_config") or {}, "gateway.autoscaling_config", flat)
        elif app.get("import_path") == MODEL_IMPORT_PATH:
            args = app.get("args") or {}
            for key in ("redis_url", "redis_prefix"):
                if key in args:
                    flat[f"models.{key}"] = _text(args[key])
    return flat


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    out = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, ("", False)), after.get(name, ("", False))
        if old[0] != new[0]:
            out.append(FieldChange(name, old[0], new[0], restarts=old[1] or new[1]))
    return out


def config_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> ConfigDiff:
    """What changed from the config ``before`` (``None``: nothing deployed) to ``after``."""
    old, new = config_models(before), config_models(after)
    changed = []
    for name in sorted(set(old) & set(new)):
        changes = _changes(old[name], new[name])
        if changes:
            changed.append(ModelChange(name, changes))
    platform_before = {k: (v, False) for k, v in config_platform(before).items()}
    platform_after = {k: (v, False) for k, v in config_platform(after).items()}
    return ConfigDiff(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        changed=changed,
        platform=_changes(platform_before, platform_after) if before is not None else [],
    )


# --- history and rollback ----------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """A recorded revision, the one recorded before it, and what changed between them.
    ``same_as``: an earlier revision with the very same config (this one re-applied it: a
    rollback or a repeated apply)."""

    revision: DeploymentRevision
    previous: DeploymentRevision | None
    diff: ConfigDiff
    same_as: DeploymentRevision | None
    rollback_allowed: bool


def latest_applied() -> DeploymentRevision | None:
    """The newest revision Ray accepted: what Ray runs (or is deploying) now."""
    return DeploymentRevision.objects.filter(outcome=DeploymentRevision.Outcome.APPLIED).first()


def can_roll_back_to(revision: DeploymentRevision, current: DeploymentRevision | None) -> bool:
    """Only to a config Ray once accepted, and not to the one it runs now."""
    return revision.outcome == DeploymentRevision.Outcome.APPLIED and (
        current is None or revision.config_hash != current.config_hash
    )


def revision_history(
    *, page: int | str = 1, per_page: int = 20
) -> tuple[Page[Any], list[HistoryEntry]]:
    """One page of recorded revisions, newest first, each with its diff from the revision
    recorded just before it (the diff of the oldest is against nothing: everything added).
    A fixed number of queries per page, whatever its length."""
    queryset = DeploymentRevision.objects.select_related("applied_by").order_by(
        "-created_at", "-id"
    )
    paginator = Paginator(queryset, per_page)
    shown = paginator.get_page(page)
    rows: list[DeploymentRevision] = list(shown.object_list)
    current = latest_applied()
    before_page = _recorded_before(rows[-1]) if rows else None
    # Every revision sharing a config with one of the page's (slim rows), newest first.
    peers = list(
        DeploymentRevision.objects.filter(config_hash__in={row.config_hash for row in rows})
        .only("id", "created_at", "config_hash", "revision", "outcome")
        .order_by("-created_at", "-id")
    )
    entries = []
    for index, revision in enumerate(rows):
        previous = rows[index + 1] if index + 1 < len(rows) else before_page
        key = (revision.created_at, revision.pk)
        same_as = next(
            (
                peer
                for peer in peers
                if peer.config_hash == revision.config_hash and (peer.created_at, peer.pk) < key
            ),
            None,
        )
        entries.append(
            HistoryEntry(
                revision=revision,
                previous=previous,
                diff=config_diff(previous.config if previous else None, revision.config),
                same_as=same_as,
                rollback_allowed=can_roll_back_to(revision, current),
            )
        )
    return shown, entries


def _recorded_before(revision: DeploymentRevision) -> DeploymentRevision | None:
    return (
        DeploymentRevision.objects.filter(created_at__lte=revision.created_at)
        .exclude(pk=revision.pk)
        .exclude(created_at=revision.created_at, id__gt=revision.pk)
        .order_by("-created_at", "-id")
        .first()
    )


class RollbackRefused(ValueError):
    """The revision cannot be rolled back to (Ray never accepted it); the message says why."""


def revision_rollback(
    *, revision: DeploymentRevision, applied_by: User | None
) -> DeploymentRevision:
    """Apply ``revision``'s recorded config again and return the new record (``applied`` or
    ``failed`` with the reason, as any apply). Raises :class:`RollbackRefused` for a revision
    Ray never accepted (a failed or pending one): its config is not known to deploy."""
    if revision.outcome != DeploymentRevision.Outcome.APPLIED:
        raise RollbackRefused(
            f"Revision #{revision.pk} was never accepted by Ray ({revision.get_outcome_display()})"
            "; only an applied revision can be rolled back to."
        )
    if not _apps(revision.config):
        raise RollbackRefused(f"Revision #{revision.pk} has no application to deploy.")
    return deployment_apply(config=revision.config, applied_by=applied_by, rolled_back_to=revision)


# --- the live rollout --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaCounts:
    starting: int = 0
    running: int = 0
    stopping: int = 0


@dataclass(frozen=True)
class RolloutRow:
    """One application of the rollout (the gateway or a model) as Ray reports it."""

    name: str  # the model's name, or "gateway"
    application: str
    state: str  # starting, running, failed, unhealthy, deleting, absent
    app_status: str
    deployment_status: str
    replicas: ReplicaCounts
    target: int
    messages: list[str]
    expected: bool  # part of the revision being rolled out (else: being removed)

    @property
    def settled(self) -> bool:
        if not self.expected:
            return False  # still listed: not yet removed
        if self.state in ("failed", "unhealthy"):
            return True
        return (
            self.state == "running"
            and self.replicas.starting == 0
            and self.replicas.stopping == 0
            and self.replicas.running == self.target
        )


@dataclass(frozen=True)
class Rollout:
    """The rollout of ``revision`` (the newest accepted one; ``None`` if none) as Ray reports it.
    ``error``: why Ray could not be asked (then ``rows`` is empty and nothing has settled)."""

    revision: DeploymentRevision | None
    rows: list[RolloutRow]
    error: str = ""
    deployed_revision: str = ""

    @property
    def on_revision(self) -> bool:
        """Ray's gateway carries the revision being rolled out."""
        return self.revision is None or self.deployed_revision == self.revision.revision

    @property
    def settled(self) -> bool:
        if self.error:
            return False
        if self.revision is None:
            return True  # nothing was ever applied from here: nothing to watch
        return self.on_revision and all(row.settled for row in self.rows)

    @property
    def failed(self) -> bool:
        return any(row.state in ("failed", "unhealthy") for row in self.rows)


def _row_state(app: dict[str, Any] | None, deployment: dict[str, Any]) -> str:
    if app is None:
        return "absent"
    app_status = str(app.get("status") or "")
    deployment_status = str(deployment.get("status") or "")
    if app_status == "DELETING":
        return "deleting"
    if app_status == "DEPLOY_FAILED" or deployment_status == "DEPLOY_FAILED":
        return "failed"
    if app_status == "UNHEALTHY" or deployment_status == "UNHEALTHY":
        return "unhealthy"
    if app_status == "RUNNING" and deployment_status in ("HEALTHY", "UPSCALING", "DOWNSCALING"):
        return "running"
    return "starting"


def _row(
    name: str, application: str, deployment_name: str, app: dict[str, Any] | None, expected: bool
) -> RolloutRow:
    deployments = (app or {}).get("deployments") or {}
    deployment = deployments.get(deployment_name) if isinstance(deployments, dict) else None
    if not isinstance(deployment, dict):
        deployment = {}
    counts = {"starting": 0, "running": 0, "stopping": 0}
    for replica in deployment.get("replicas") or []:
        state = str((replica or {}).get("state") or "")
        if state in _RUNNING:
            counts["running"] += 1
        elif state in _STOPPING:
            counts["stopping"] += 1
        else:
            counts["starting"] += 1
    messages = [
        str(text).strip()
        for text in ((app or {}).get("message"), deployment.get("message"))
        if text and str(text).strip()
    ]
    if app is None:
        messages.append("Ray does not list this application yet.")
    try:
        target = int(deployment.get("target_num_replicas") or 0)
    except (TypeError, ValueError):
        target = 0
    return RolloutRow(
        name=name,
        application=application,
        state=_row_state(app, deployment),
        app_status=str((app or {}).get("status") or "ABSENT"),
        deployment_status=str(deployment.get("status") or ""),
        replicas=ReplicaCounts(**counts),
        target=target,
        messages=messages,
        expected=expected,
    )


def rollout_read(*, timeout: float = ROLLOUT_TIMEOUT_S) -> Rollout:
    """Ray's view of the newest accepted revision's applications (and of any other application
    Ray still lists, being removed). Never raises for Ray's sake."""
    revision = latest_applied()
    try:
        details = RayDashboardClient.from_settings(timeout=timeout).get_applications()
    except RayDashboardError as exc:
        return Rollout(revision=revision, rows=[], error=str(exc))
    listed = details.get("applications") or {}
    if not isinstance(listed, dict):
        listed = {}
    expected: list[tuple[str, str, str]] = []  # (shown name, application, deployment)
    if revision is not None:
        for app in _apps(revision.config):
            app_name = str(app.get("name") or "")
            if app_name == APP_NAME:
                expected.append(("gateway", APP_NAME, GATEWAY_DEPLOYMENT))
            elif app.get("import_path") == MODEL_IMPORT_PATH:
                shown = str((app.get("args") or {}).get("name") or app_name)
                expected.append((shown, app_name, app_name))
    rows = [
        _row(shown, app_name, deployment, _app_or_none(listed, app_name), True)
        for shown, app_name, deployment in expected
    ]
    known = {app_name for _, app_name, _ in expected}
    for app_name in sorted(set(listed) - known):
        other = _app_or_none(listed, app_name)
        deployments = (other or {}).get("deployments") or {}
        first = next(iter(deployments), app_name) if isinstance(deployments, dict) else app_name
        rows.append(_row(app_name, app_name, str(first), other, False))
    return Rollout(
        revision=revision,
        rows=rows,
        deployed_revision=deployed_revision(_app_or_none(listed, APP_NAME)),
    )


def _app_or_none(listed: dict[str, Any], name: str) -> dict[str, Any] | None:
    app = listed.get(name)
    return app if isinstance(app, dict) else None


__all__ = [
    "ConfigDiff",
    "FieldChange",
    "HistoryEntry",
    "ModelChange",
    "RollbackRefused",
    "Rollout",
    "RolloutRow",
    "config_diff",
    "config_models",
    "config_platform",
    "latest_applied",
    "revision_history",
    "revision_rollback",
    "rollout_read",
]
