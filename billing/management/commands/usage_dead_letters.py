"""List and replay usage dead letters (``billing.dead_letters``).

    manage.py usage_dead_letters list [--status pending|replayed|all]
    manage.py usage_dead_letters replay --id ID [--id ID …]
    manage.py usage_dead_letters replay --all

Replay goes through the same ingest as the Celery task (``billing.ingest.dead_letter_replay``),
so it is idempotent: events already ingested count as duplicates, a replayed dead letter is left
alone, and events that are still invalid stay in their (pending) dead letter with the reasons.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.ingest import dead_letter_replay
from billing.models import DeadLetterBatch


def _summary(text: str, width: int = 90) -> str:
    line = text.strip().splitlines()[-1] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


class Command(BaseCommand):
    help = "List usage dead letters, or replay them through ingest (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="List dead letters, newest first.")
        listing.add_argument("--status", choices=["pending", "replayed", "all"], default="pending")
        replay = actions.add_parser("replay", help="Ingest dead letters again.")
        which = replay.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", action="append", type=uuid.UUID, dest="ids", metavar="ID")
        which.add_argument("--all", action="store_true", help="Every pending dead letter.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            self._list(options["status"])
        else:
            self._replay(options["ids"], options["all"])

    def _list(self, status: str) -> None:
        rows = DeadLetterBatch.objects.all()
        if status != "all":
            rows = rows.filter(status=status)
        count = 0
        for dead in rows:
            count += 1
            events = len(dead.events) if isinstance(dead.events, list) else 1
            self.stdout.write(
                f"{dead.pk}  {dead.created_at:%Y-%m-%d %H:%M:%S}  {dead.status:<8}  "
                f"{events:>5} events  {dead.attempts:>2} attempts  task {dead.task_id or '-'}  "
                f"{_summary(dead.error)}"
            )
        self.stdout.write(f"{count} dead letters ({status}).")

    def _replay(self, ids: list[uuid.UUID] | None, every: bool) -> None:
        if every:
            ids = list(
                DeadLetterBatch.objects.filter(status=DeadLetterBatch.Status.PENDING)
                .order_by("created_at")
                .values_list("pk", flat=True)
            )
        failed = 0
        for dead_letter_id in ids or []:
            try:
                outcome = dead_letter_replay(dead_letter_id=dead_letter_id)
            except DeadLetterBatch.DoesNotExist:
                failed += 1
                self.stderr.write(f"{dead_letter_id}: no such dead letter")
                continue
            except Exception as exc:  # report and go on with the others
                failed += 1
                self.stderr.write(f"{dead_letter_id}: replay failed: {exc}")
                continue
            result = outcome.result
            if outcome.already_replayed:
                state = "already replayed, nothing done"
            elif outcome.still_invalid:
                state = f"{outcome.still_invalid} still invalid, left pending"
            else:
                state = "replayed"
            self.stdout.write(
                f"{dead_letter_id}: {result.inserted} new, {result.duplicates} duplicates; {state}"
            )
        if failed:
            raise CommandError(f"{failed} dead letters could not be replayed")
