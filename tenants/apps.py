from django.apps import AppConfig


class TenantsConfig(AppConfig):
    """Organisations (the tenants), memberships, API keys, limits, and the access snapshot."""

    name = "tenants"
    verbose_name = "Tenants"
