"""Publish the access snapshot to Redis; ``--full`` rewrites it all and drops stale records."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants import snapshot
from tenants.models import ApiKey, Organization


class Command(BaseCommand):
    help = (
        "Publish the access snapshot (docs/access-snapshot.md) to Redis. Use --full for a new or "
        "drifted Redis: every record is rewritten and records with no row behind them removed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--full",
            action="store_true",
            help="Rewrite every record and remove stale ones (otherwise: organisations and keys "
            "are rewritten, nothing is removed).",
        )

    def handle(self, *args: Any, full: bool, **options: Any) -> None:
        if full:
            result = snapshot.publish_full()
            self.stdout.write(
                f"Published {result.organizations} organisations and {result.keys} keys; "
                f"removed {result.removed} stale records."
            )
            return
        orgs = snapshot.publish_organizations(Organization.objects.all())
        count = snapshot.publish_keys(ApiKey.objects.all())
        self.stdout.write(f"Published {orgs} organisations and {count} keys.")
