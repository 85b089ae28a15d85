"""The hourly rollup's key gains the prices the requests were served at (docs/billing.md,
"Invoices"): an invoice line is then "tokens times unit price" per model and price, exactly.

Existing rows keep ``NULL`` prices (their events carried none) and stay one row per group: the
unique constraint is ``NULLS NOT DISTINCT`` (Postgres 15+), which is also what lets the ingest's
``ON CONFLICT`` on the six columns find a price-less row. SQLite ignores ``nulls_distinct``: there
several price-less rows of one group can exist, which every reader adds up (they all SUM).
The constraint is dropped and re-created under the same name in this migration's transaction.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_prepaid_and_stripe"),
        ("tenants", "0005_billing_mode"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="usagerollup",
            name="usage_rollup_unique",
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="price_input_per_mtok",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddField(
            model_name="usagerollup",
            name="price_output_per_mtok",
            field=models.DecimalField(blank=True, decimal_places=6, max_digits=12, null=True),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.UniqueConstraint(
                fields=(
                    "organization",
                    "hour",
                    "api_key",
                    "model",
                    "price_input_per_mtok",
                    "price_output_per_mtok",
                ),
                name="usage_rollup_unique",
                nulls_distinct=False,
            ),
        ),
    ]
