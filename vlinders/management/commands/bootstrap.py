"""Bring a fresh installation to a usable state; safe to run any number of times.

Creates (only if missing) a platform admin, a demo organisation owned by that admin, one demo
API key whose secret is printed once, and a demo catalog entry. Then publishes the access
snapshot in full.

Until the vLLM engine lands, the demo catalog entry runs on the synthetic engine: a labelled test
engine that answers with deterministic filler words, not a model. It is named so.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import redis
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from inference.models import CatalogModel, EngineKind
from inference.services import catalog_model_create
from tenants import services, snapshot
from tenants.models import ApiKey, Membership, Organization, Role, Scope

DEMO_MODEL = "synthetic-demo"
DEMO_ORG_SLUG = "demo"
DEMO_KEY_NAME = "demo key"


class Command(BaseCommand):
    help = "Create the platform admin, the demo organisation and its API key (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--admin-username", default=os.environ.get("VLINDERS_ADMIN_USERNAME", "admin")
        )
        parser.add_argument(
            "--admin-email", default=os.environ.get("VLINDERS_ADMIN_EMAIL", "admin@localhost")
        )
        parser.add_argument(
            "--rotate-demo-key",
            action="store_true",
            help="Issue a new demo key and revoke the old one (if you lost its secret).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            admin = self._admin(options["admin_username"], options["admin_email"])
            org = self._demo_org(admin)
            self._demo_key(org, admin, rotate=options["rotate_demo_key"])
            self._demo_model()
        try:
            result = snapshot.publish_full()
        except redis.RedisError as error:
            self.stderr.write(
                f"Could not publish the access snapshot to Redis ({error}). Start Redis and run "
                "`manage.py publish_access_snapshot --full`."
            )
        else:
            self.stdout.write(
                f"Access snapshot published: {result.organizations} organisations, "
                f"{result.keys} keys."
            )

    def _admin(self, username: str, email: str) -> Any:
        users = get_user_model()
        admin = users.objects.filter(username=username).first()
        if admin is not None:
            self.stdout.write(f"Platform admin '{username}' exists.")
            return admin
        password = os.environ.get("VLINDERS_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        admin = users.objects.create_superuser(username=username, email=email, password=password)
        shown = (
            "(from VLINDERS_ADMIN_PASSWORD)"
            if "VLINDERS_ADMIN_PASSWORD" in os.environ
            else password
        )
        self.stdout.write(
            self.style.SUCCESS(f"Created platform admin '{username}', password: {shown}")
        )
        return admin

    def _demo_org(self, admin: Any) -> Organization:
        org = Organization.objects.filter(slug=DEMO_ORG_SLUG).first()
        if org is None:
            org = services.organization_create(name="Demo", slug=DEMO_ORG_SLUG, owner=admin)
            self.stdout.write(self.style.SUCCESS("Created the demo organisation 'demo'."))
        elif not Membership.objects.filter(organization=org, user=admin).exists():
            Membership.objects.create(organization=org, user=admin, role=Role.OWNER)
        return org

    def _demo_model(self) -> None:
        if CatalogModel.objects.filter(name=DEMO_MODEL).exists():
            return
        catalog_model_create(
            name=DEMO_MODEL,
            engine_kind=EngineKind.SYNTHETIC,
            context_length=4096,
            description=(
                "Synthetic TEST engine, not a model: deterministic filler words at a set pace, "
                "for trying the platform before a real model is added."
            ),
            engine_args={"ttft_ms": 20, "tpot_ms": 10, "default_max_tokens": 24},
            replica_cpus="0.5",
        )
        self.stdout.write(self.style.SUCCESS(f"Added the catalog entry '{DEMO_MODEL}'."))

    def _demo_key(self, org: Organization, admin: Any, *, rotate: bool) -> None:
        existing = [
            key
            for key in ApiKey.objects.filter(organization=org, name=DEMO_KEY_NAME, revoked_at=None)
            if key.status == ApiKey.Status.ACTIVE
        ]
        if existing and not rotate:
            self.stdout.write(
                f"Demo API key exists ({existing[0].display}); its secret was shown when it was "
                "created. Run `manage.py bootstrap --rotate-demo-key` for a new one."
            )
            return
        if existing:
            _, secret = services.api_key_rotate(
                api_key=existing[0], actor_role=Role.OWNER, actor=admin
            )
        else:
            _, secret = services.api_key_create(
                organization=org,
                name=DEMO_KEY_NAME,
                created_by=admin,
                actor_role=Role.OWNER,
                scopes=[Scope.INFERENCE.value, Scope.MANAGEMENT_READ.value],
            )
        self.stdout.write(self.style.SUCCESS(f"Demo API key (shown once, keep it): {secret}"))
