from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Usage events and rollups, prices and plans, invoices, Stripe and reports.

    Empty until the usage-metering issue: the gateway's usage events (contract 4) land here.
    """

    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Celery's autodiscovery imports only ``billing.tasks``; the beat tasks live apart.
        from billing import periodic  # noqa: F401
