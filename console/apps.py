from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The web console for platform operators and tenant admins."""

    name = "console"
    verbose_name = "Console"
