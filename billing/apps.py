from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Usage events (contract 4) and their hourly rollups, spend reconciliation, budget alerts,
    retention, the usage API, and invoices; Stripe and reports come later."""

    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Celery's autodiscovery imports only ``billing.tasks``; the beat tasks live apart.
        from billing import (
            periodic,  # noqa: F401
            stripe_tasks,  # noqa: F401
        )
