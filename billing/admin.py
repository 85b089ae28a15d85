"""Django admin for platform staff: usage events and rollups are read-only (facts, written only by
ingest); dead letters can be inspected, their events corrected while pending, and replayed
through the same ingest as the Celery task."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.ingest import dead_letter_replay
from billing.models import DeadLetterBatch, UsageEvent, UsageRollup
from vlinders.admin_base import ReadOnlyAdmin


class _UsageAdmin(ReadOnlyAdmin):
    """View-only: ingest is the only writer of these tables."""

    show_full_result_count = False  # no COUNT(*) over millions of events on every page


@admin.register(UsageEvent)
class UsageEventAdmin(_UsageAdmin):
    list_display = [
        "request_id",
        "started_at",
        "organization_id",
        "api_key_id",
        "model",
        "served_model",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    ]
    list_filter = ["endpoint", "stream"]
    # Exact matches only: they use the primary key, a LIKE over every event would not.
    search_fields = ["=request_id", "=http_request_id"]
    ordering = ["-started_at"]


@admin.register(UsageRollup)
class UsageRollupAdmin(_UsageAdmin):
    list_display = [
        "hour",
        "organization_id",
        "api_key_id",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost",
    ]
    list_filter = ["model"]
    date_hierarchy = "hour"
    ordering = ["-hour"]


@admin.register(DeadLetterBatch)
class DeadLetterBatchAdmin(admin.ModelAdmin[DeadLetterBatch]):
    list_display = ["created_at", "status", "event_count", "attempts", "task_id", "short_error"]
    list_filter = ["status"]
    search_fields = ["=task_id"]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: DeadLetterBatch | None = None) -> Any:
        fields = ["task_id", "error", "attempts", "status", "created_at", "replayed_at"]
        if obj is not None and obj.status != DeadLetterBatch.Status.PENDING:
            fields.append("events")  # only a pending batch's events may be corrected
        return fields

    @admin.display(description="events")
    def event_count(self, obj: DeadLetterBatch) -> int:
        return len(obj.events) if isinstance(obj.events, list) else 1

    @admin.display(description="error")
    def short_error(self, obj: DeadLetterBatch) -> str:
        lines = obj.error.strip().splitlines()
        return lines[-1][:120] if lines else ""

    @admin.action(description="Replay selected dead letters (idempotent)")
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetterBatch]) -> None:
        inserted = replayed = pending = 0
        for dead_letter_id in queryset.order_by("created_at").values_list("pk", flat=True):
            try:
                outcome = dead_letter_replay(dead_letter_id=dead_letter_id)
            except Exception as exc:
                self.message_user(
                    request, f"{dead_letter_id}: replay failed: {exc}", messages.ERROR
                )
                continue
            inserted += outcome.result.inserted
            replayed += outcome.replayed
            pending += bool(outcome.still_invalid)
        level = messages.WARNING if pending else messages.SUCCESS
        self.message_user(
            request,
            f"{replayed} dead letters replayed, {inserted} events ingested; "
            f"{pending} still hold invalid events.",
            level,
        )
