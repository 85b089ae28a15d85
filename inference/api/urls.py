from rest_framework.routers import SimpleRouter

from inference.api.views import CatalogModelViewSet, ModelAliasViewSet

router = SimpleRouter()
router.register("models", CatalogModelViewSet, basename="catalog-model")
router.register("aliases", ModelAliasViewSet, basename="model-alias")

urlpatterns = router.urls
