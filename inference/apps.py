from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """The model catalog and, later, the deployment specs pushed to the Ray Serve data plane.

    ``inference.serving`` is the data plane itself and never imports Django.
    """

    name = "inference"
    verbose_name = "Inference"
