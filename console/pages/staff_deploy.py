"""Operator console: Deploy (docs/operator-console.md, "Deploy, revisions and rollback").

* ``/staff/deploy/`` (``staff-deploy``): the Apply button, the live rollout and the revision
  history (each revision with who, when, outcome, Ray's error and what changed from the one
  recorded before it).
* ``POST /staff/deploy/apply/`` (``staff-deploy-apply``): apply the catalog.
* ``/staff/deploy/rollout/`` (``staff-deploy-rollout``): the live rollout, a partial htmx polls
  every second while it has not settled (the partial it answers once settled has no trigger, so
  polling stops). It asks Ray's dashboard directly with a short timeout and never fails for
  Ray's sake: an unreachable dashboard is a line in the partial.
* ``/staff/deploy/revisions/<id>/rollback/`` (``staff-deploy-rollback``): the confirmation
  (what would change from what runs now), then ``POST confirm=yes`` re-applies that revision's
  config (``inference.rollouts.revision_rollback``).

The apply runs in the request, not in the Celery worker: ``deployment_apply`` only sends the
config to Ray's dashboard, which validates it and answers at once (Ray then deploys in the
background, which the live view shows); so the operator sees the outcome, or the reason of a
failure, on the very next page, and the console works on an install without a worker. The
revision record (who, when, config, outcome, error) is the audit trail of every apply.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from console.staff import staff_page
from inference import rollouts
from inference.deploy_services import deployment_apply
from inference.models import DeploymentRevision

# The live view polls this often while a rollout is in progress (and a little slower while
# Ray's dashboard does not answer).
POLL_EVERY = "1s"
POLL_UNREACHABLE = "2s"


def _user(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


def _rollout_context(rollout: rollouts.Rollout) -> dict[str, object]:
    poll = "" if rollout.settled else (POLL_UNREACHABLE if rollout.error else POLL_EVERY)
    return {"rollout": rollout, "poll": poll}


def _outcome_message(request: HttpRequest, record: DeploymentRevision, what: str) -> None:
    if record.outcome == DeploymentRevision.Outcome.APPLIED:
        messages.success(
            request,
            f"{what}: revision #{record.pk} ({record.revision[:12]}) accepted by Ray; "
            "the rollout below shows its replicas coming up.",
        )
    else:
        messages.error(
            request,
            f"{what} failed: revision #{record.pk} ({record.revision[:12]}) was not applied and "
            f"Ray keeps serving the previous one. {record.error}",
        )


@staff_page
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    page, history = rollouts.revision_history(page=request.GET.get("page") or 1)
    latest = DeploymentRevision.objects.select_related("applied_by").first()
    return render(
        request,
        "console/staff/deploy.html",
        {
            "section": "deploy",
            "latest": latest,
            "page": page,
            "history": history,
            **_rollout_context(rollouts.rollout_read()),
        },
    )


@staff_page
@require_POST
def apply(request: HttpRequest) -> HttpResponse:
    record = deployment_apply(applied_by=_user(request))
    _outcome_message(request, record, "Apply")
    return redirect("console:staff-deploy")


@staff_page
@require_GET
def rollout(request: HttpRequest) -> HttpResponse:
    """The live rollout partial (htmx): always 200, whatever Ray answers."""
    return render(
        request, "console/staff/deploy_rollout.html", _rollout_context(rollouts.rollout_read())
    )


@staff_page
def rollback(request: HttpRequest, revision_id: int) -> HttpResponse:
    """Ask (GET, or a POST without ``confirm=yes``), then roll back. A revision that cannot be
    rolled back to answers 400 with the reason."""
    target = get_object_or_404(
        DeploymentRevision.objects.select_related("applied_by"), pk=revision_id
    )
    current = rollouts.latest_applied()
    refused = ""
    if not rollouts.can_roll_back_to(target, current):
        refused = (
            f"Revision #{target.pk} is what Ray runs now: there is nothing to roll back."
            if target.outcome == DeploymentRevision.Outcome.APPLIED
            else f"Revision #{target.pk} was never accepted by Ray ({target.get_outcome_display()}"
            "): only an applied revision can be rolled back to."
        )
    if request.method == "POST" and request.POST.get("confirm") == "yes" and not refused:
        try:
            record = rollouts.revision_rollback(revision=target, applied_by=_user(request))
        except rollouts.RollbackRefused as exc:
            refused = str(exc)
        else:
            _outcome_message(request, record, f"Rollback to revision #{target.pk}")
            return redirect("console:staff-deploy")
    diff = rollouts.config_diff(current.config if current else None, target.config)
    return render(
        request,
        "console/staff/deploy_rollback.html",
        {
            "section": "deploy",
            "target": target,
            "current": current,
            "diff": diff,
            "refused": refused,
        },
        status=400 if refused and request.method == "POST" else 200,
    )


urlpatterns = [
    path("deploy/", index, name="staff-deploy"),
    path("deploy/apply/", apply, name="staff-deploy-apply"),
    path("deploy/rollout/", rollout, name="staff-deploy-rollout"),
    path("deploy/revisions/<int:revision_id>/rollback/", rollback, name="staff-deploy-rollback"),
]
