from django.apps import AppConfig


class VlindersConfig(AppConfig):
    """The platform package as an app, so it can hold cross-app management commands."""

    name = "vlinders"
    verbose_name = "Vlinders platform"
