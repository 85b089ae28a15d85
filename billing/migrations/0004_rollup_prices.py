"""The hourly rollup's key gains the prices the requests were served at (docs/billing.md,
"Invoices"): an invoice line is then "tokens times unit price" per model and price, exactly.

Existing rows keep ``NULL`` prices (their events carried none). Uniqueness is two partial
constraints, as ``BudgetAlert``'s: (organisation, hour, key, model, prices) where priced, and
(organisation, hour, key, model) where not, which is the old constraint for the old rows; each
of the ingest's two upserts names one (``ON CONFLICT (…) WHERE …``). One constraint with NULLS
NOT DISTINCT would do on Postgres 15, but SQLite (the single-machine default) has no such option
and Django would create no constraint there at all, leaving the upsert without a conflict
target. The readers' full index on (organisation, hour, key, model) is kept apart, since a query
without a price condition cannot use a partial index. A check constraint keeps the two prices
both set or both empty.
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
        migrations.AddIndex(
            model_name="usagerollup",
            index=models.Index(
                fields=["organization", "hour", "api_key", "model"], name="usage_rollup_org_hour"
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.UniqueConstraint(
                condition=models.Q(("price_input_per_mtok__isnull", False)),
                fields=(
                    "organization",
                    "hour",
                    "api_key",
                    "model",
                    "price_input_per_mtok",
                    "price_output_per_mtok",
                ),
                name="usage_rollup_unique",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.UniqueConstraint(
                condition=models.Q(("price_input_per_mtok__isnull", True)),
                fields=("organization", "hour", "api_key", "model"),
                name="usage_rollup_unique_unpriced",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerollup",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("price_input_per_mtok__isnull", True),
                        ("price_output_per_mtok__isnull", True),
                    ),
                    models.Q(
                        ("price_input_per_mtok__isnull", False),
                        ("price_output_per_mtok__isnull", False),
                    ),
                    _connector="OR",
                ),
                name="usage_rollup_prices_both_or_neither",
            ),
        ),
    ]
