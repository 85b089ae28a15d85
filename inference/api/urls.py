from django.urls import path
from rest_framework.routers import SimpleRouter

from inference.api.views import (
    CatalogModelViewSet,
    DeploymentRevisionListView,
    ModelAliasViewSet,
    ModelDeploymentStatusListView,
)

router = SimpleRouter()
router.register("models", CatalogModelViewSet, basename="catalog-model")
router.register("aliases", ModelAliasViewSet, basename="model-alias")

urlpatterns = router.urls

# Deployments to Ray Serve (contract 1), read-only for platform staff.
urlpatterns += [
    path("deployments/", DeploymentRevisionListView.as_view(), name="deployment-revision-list"),
    path(
        "deployments/status/",
        ModelDeploymentStatusListView.as_view(),
        name="model-deployment-status-list",
    ),
]
