from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from inference.api.views import (
    NAME_IN_PATH,
    CatalogModelScaleView,
    CatalogModelViewSet,
    DeploymentRevisionListView,
    ModelAliasViewSet,
    ModelDeploymentStatusListView,
)

router = SimpleRouter()
router.register("models", CatalogModelViewSet, basename="catalog-model")
router.register("aliases", ModelAliasViewSet, basename="model-alias")

# Before the router's routes: a name may hold "/", so the model route would otherwise take
# ``<name>/scale/`` as a model named "<name>/scale" (and answer the POST with 405).
urlpatterns = [
    re_path(
        rf"^models/(?P<name>{NAME_IN_PATH})/scale/$",
        CatalogModelScaleView.as_view(),
        name="catalog-model-scale",
    ),
    *router.urls,
]

# Deployments to Ray Serve (contract 1), read-only for platform staff.
urlpatterns += [
    path("deployments/", DeploymentRevisionListView.as_view(), name="deployment-revision-list"),
    path(
        "deployments/status/",
        ModelDeploymentStatusListView.as_view(),
        name="model-deployment-status-list",
    ),
]
