"""Operator console: dead-lettered usage batches (``billing.dead_letters``) and their replay.

* ``/staff/dead-letters/?state=pending|replayed|all`` (``staff-dead-letters``): newest first,
  when, why (one line), how many events, attempts, state; pending ones by default. An unknown
  state is a 400 page with the form's error.
* ``/staff/dead-letters/<id>/`` (``staff-dead-letter``): one dead letter with its whole error
  and its payload (the events as stored).
* ``/staff/dead-letters/<id>/replay/`` (``staff-dead-letter-replay``): asks first (GET, or a
  POST without ``confirm=yes``), then replays through ``billing.ingest.dead_letter_replay`` —
  the very code of ``manage.py usage_dead_letters replay`` and the admin action, so replaying is
  idempotent (events already ingested count as duplicates, a replayed dead letter is left
  alone) and events that are still invalid keep it pending with the reasons. The outcome is
  shown on the dead letter's page, and the replay is audited (``dead_letter.replayed``).

Every view is wrapped in ``console.staff.staff_page`` (anonymous → sign-in, non-staff → 404).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse

from billing.dead_letters import dead_letter_reason, dead_letter_size
from billing.ingest import ReplayOutcome, dead_letter_replay
from billing.models import DeadLetterBatch
from console.pages.filters import PAGE_SIZE, invalid_status
from console.pages.staff_billing import Table
from console.staff import staff_page

logger = logging.getLogger(__name__)

# The payload shown on a dead letter's page: enough to see what is wrong, never a page of
# megabytes (a whole failed batch can be large); the rest is in the admin and the command.
PAYLOAD_SHOWN = 200


class StateForm(forms.Form):
    state = forms.ChoiceField(
        label="State",
        required=False,
        choices=[
            ("pending", "Waiting for an operator"),
            ("replayed", "Replayed"),
            ("all", "All"),
        ],
    )

    def chosen(self) -> str:
        return self.cleaned_data.get("state") or "pending"


def _when(value: Any) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def dead_letters_table(rows: list[DeadLetterBatch]) -> Table:
    return Table(
        name="dead-letters",
        empty="No dead letters.",
        headers=("Parked (UTC)", "Reason", "Events", "Attempts", "State", "Replayed (UTC)"),
        numeric=(False, False, True, True, False, False),
        rows=[
            (
                [
                    _when(row.created_at),
                    dead_letter_reason(row.error),
                    dead_letter_size(row.events),
                    row.attempts,
                    row.get_status_display(),
                    _when(row.replayed_at),
                ],
                reverse("console:staff-dead-letter", args=[row.pk]),
            )
            for row in rows
        ],
    )


@staff_page
def dead_letter_list(request: HttpRequest) -> HttpResponse:
    form = StateForm(request.GET)
    if not form.is_valid():
        context = {"section": "dead-letters", "form": form, "page": None}
        return render(
            request, "console/staff/dead_letters.html", context, status=invalid_status(request)
        )
    state = form.chosen()
    rows = DeadLetterBatch.objects.order_by("-created_at", "-pk")
    if state != "all":
        rows = rows.filter(status=state)
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "section": "dead-letters",
        "form": form,
        "state": state,
        "page": page,
        "table": dead_letters_table(list(page.object_list)),
        "pending": DeadLetterBatch.objects.filter(status=DeadLetterBatch.Status.PENDING).count(),
    }
    return render(request, "console/staff/dead_letters.html", context)


@staff_page
def dead_letter_detail(request: HttpRequest, pk: UUID) -> HttpResponse:
    dead = get_object_or_404(DeadLetterBatch, pk=pk)
    events = dead.events if isinstance(dead.events, list) else [dead.events]
    context = {
        "section": "dead-letters",
        "dead": dead,
        "size": dead_letter_size(dead.events),
        "reason": dead_letter_reason(dead.error),
        "payload": json.dumps(events[:PAYLOAD_SHOWN], indent=2, sort_keys=True),
        "shown": min(len(events), PAYLOAD_SHOWN),
        "pending": dead.status == DeadLetterBatch.Status.PENDING,
    }
    return render(request, "console/staff/dead_letters_detail.html", context)


def _report(request: HttpRequest, outcome: ReplayOutcome, reason: str) -> None:
    """Say what the replay did, as the management command does."""
    result = outcome.result
    counted = f"{result.inserted} new, {result.duplicates} already ingested (not counted again)"
    if outcome.already_replayed:
        messages.info(request, "Already replayed: nothing was done.")
    elif outcome.still_invalid:
        valid = result.received
        head = f"Ingested the {valid} valid events: {counted}; " if valid else "No valid event; "
        messages.warning(
            request,
            f"{head}{outcome.still_invalid} still invalid, so the dead letter stays pending. "
            f"{reason}",
        )
    else:
        messages.success(request, f"Replayed: {counted}.")


@staff_page
def dead_letter_replay_view(request: HttpRequest, pk: UUID) -> HttpResponse:
    """Ask, then replay: a POST without ``confirm=yes`` shows the question instead."""
    dead = get_object_or_404(DeadLetterBatch, pk=pk)
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        try:
            outcome = dead_letter_replay(dead_letter_id=dead.pk, actor=request.user)
        except Exception as exc:  # a database error: nothing changed (one transaction)
            logger.exception("replaying dead letter %s failed", dead.pk)
            messages.error(request, f"Replay failed, nothing changed: {exc}")
        else:
            logger.info(
                "dead letter %s replayed by %s: %d new, %d duplicates, %d still invalid",
                dead.pk,
                request.user.get_username(),
                outcome.result.inserted,
                outcome.result.duplicates,
                outcome.still_invalid,
            )
            dead.refresh_from_db()
            _report(request, outcome, dead_letter_reason(dead.error))
        return redirect("console:staff-dead-letter", dead.pk)
    context = {
        "section": "dead-letters",
        "dead": dead,
        "size": dead_letter_size(dead.events),
        "reason": dead_letter_reason(dead.error),
        "pending": dead.status == DeadLetterBatch.Status.PENDING,
    }
    return render(request, "console/staff/dead_letters_replay.html", context)


urlpatterns = [
    path("dead-letters/", dead_letter_list, name="staff-dead-letters"),
    path("dead-letters/<uuid:pk>/", dead_letter_detail, name="staff-dead-letter"),
    path(
        "dead-letters/<uuid:pk>/replay/", dead_letter_replay_view, name="staff-dead-letter-replay"
    ),
]
