"""Migration 0005: recorded revisions lose the upstream keys their configs used to carry."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps as django_apps

from inference.models import DeploymentRevision

pytestmark = pytest.mark.django_db

migration = importlib.import_module("inference.migrations.0005_scrub_keys_from_revisions")


def _legacy_config(key: str) -> dict:  # type: ignore[type-arg]
    """A config as rendered before keys travelled through Redis: one application, whole spec."""
    return {
        "applications": [
            {
                "name": "vlinders",
                "args": {
                    "revision": "r",
                    "models": [
                        {"name": "up", "source": {"base_url": "http://x/v1", "api_key": key}},
                        {"name": "local", "source": {"path": "/models/m"}},
                    ],
                },
            }
        ]
    }


def test_keys_are_removed_and_everything_else_kept() -> None:
    legacy = DeploymentRevision.objects.create(
        revision="r", config_hash="0" * 64, config=_legacy_config("sk-plain-old-key")
    )
    current = DeploymentRevision.objects.create(
        revision="s", config_hash="1" * 64, config={"applications": [{"name": "vlinders"}]}
    )
    migration.scrub(django_apps, None)
    legacy.refresh_from_db()
    assert "sk-plain-old-key" not in str(legacy.config)
    models = legacy.config["applications"][0]["args"]["models"]
    assert models[0]["source"] == {"base_url": "http://x/v1"}
    assert models[1]["source"] == {"path": "/models/m"}
    current.refresh_from_db()
    assert current.config == {"applications": [{"name": "vlinders"}]}
