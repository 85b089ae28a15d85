from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """The model catalog and the deployment specs pushed to the Ray Serve data plane.

    ``inference.serving`` is the data plane itself and never imports Django.
    """

    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        # tenants must not import inference (the apps would be a cycle): it asks its questions
        # about the catalog through tenants.catalog, and this app answers them.
        from inference.selectors import TenantsCatalogProvider
        from tenants.catalog import register_catalog_provider

        register_catalog_provider(TenantsCatalogProvider())
