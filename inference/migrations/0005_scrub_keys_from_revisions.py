"""Remove upstream API keys from the configs of recorded deployment revisions.

Before upstream keys travelled through Redis, the rendered config carried each ``openai``
model's key in plain text (``applications[].args.models[].source.api_key``), and every recorded
revision kept a copy. The keys are deleted from those records; a rollback to such a revision
still works, since the model server now reads its key from Redis. Not reversible: the keys are
not kept anywhere to put back (they are in the catalog, encrypted).
"""

from django.db import migrations


def scrub(apps, schema_editor):
    DeploymentRevision = apps.get_model("inference", "DeploymentRevision")
    for record in DeploymentRevision.objects.all().iterator():
        changed = False
        for app in record.config.get("applications") or []:
            for model in (app.get("args") or {}).get("models") or []:
                source = model.get("source") or {}
                if "api_key" in source:
                    del source["api_key"]
                    changed = True
        if changed:
            record.save(update_fields=["config"])


class Migration(migrations.Migration):
    dependencies = [
        ("inference", "0004_encrypt_upstream_api_keys"),
    ]

    operations = [migrations.RunPython(scrub, migrations.RunPython.noop)]
