"""Upstream API keys encrypted at rest: the column becomes a text column of Fernet tokens, and
every plain key already stored is encrypted with ``VLINDERS_SECRETS_KEY``.

A value that the current keys already open is left as it is, so running the migration on a
database it partly converted is harmless. Reversing it decrypts the tokens back to plain keys.
"""

from typing import Any

from django.db import migrations, models

from inference import upstream_secrets


def encrypt_plain_keys(apps: Any, schema_editor: Any) -> None:
    CatalogModel = apps.get_model("inference", "CatalogModel")
    for model in CatalogModel.objects.exclude(upstream_api_key="").only("upstream_api_key"):
        if not upstream_secrets.is_encrypted(model.upstream_api_key):
            model.upstream_api_key = upstream_secrets.encrypt(model.upstream_api_key)
            model.save(update_fields=["upstream_api_key"])


def decrypt_tokens(apps: Any, schema_editor: Any) -> None:
    CatalogModel = apps.get_model("inference", "CatalogModel")
    for model in CatalogModel.objects.exclude(upstream_api_key="").only("upstream_api_key"):
        if upstream_secrets.is_encrypted(model.upstream_api_key):
            model.upstream_api_key = upstream_secrets.decrypt(model.upstream_api_key)
            model.save(update_fields=["upstream_api_key"])


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0003_model_queue_and_timeout"),
    ]

    operations = [
        # First widen the column: a token is longer than the key it holds.
        migrations.AlterField(
            model_name="catalogmodel",
            name="upstream_api_key",
            field=models.TextField(blank=True),
        ),
        migrations.RunPython(encrypt_plain_keys, decrypt_tokens, elidable=False),
    ]
