"""``manage.py upstream_secrets publish|reencrypt``: the upstream API keys' Redis records and the
rotation of ``VLINDERS_SECRETS_KEY`` (docs/operations.md, Upstream API keys)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from inference import upstream_secrets


class Command(BaseCommand):
    help = (
        "publish: rewrite every upstream API key's Redis record (encrypted) and delete stale "
        "ones. reencrypt: after putting a new key first in VLINDERS_SECRETS_KEY, re-encrypt "
        "every stored key under it, then publish."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("action", choices=["publish", "reencrypt"])

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "reencrypt":
            count = upstream_secrets.reencrypt_all()
            self.stdout.write(f"Re-encrypted {count} upstream API keys under the current key.")
        result = upstream_secrets.upstream_credentials_publish_all()
        self.stdout.write(
            f"Published {result.published} upstream credentials; removed {result.removed} "
            "stale records."
        )
