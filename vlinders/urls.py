"""Top-level URLs: the console, the management API under /api/v1/, its schema and docs, the
Django admin for platform staff, and a health check. (``/metrics`` is answered by
``vlinders.metrics.MetricsEndpointMiddleware``, before host validation.)"""

from csp.decorators import csp_exempt
from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from billing.webhooks import stripe_webhook


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. (Readiness of Postgres/Redis is checked by ``check``.)"""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("tenants.api.urls")),
    path("api/v1/", include("inference.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The API's documentation pages run drf-spectacular's inline scripts: outside the console's
    # Content Security Policy (they show no secrets and take no input but the schema).
    path(
        "api/v1/docs/",
        csp_exempt()(SpectacularSwaggerView.as_view(url_name="api-schema")),
        name="api-docs",
    ),
    path(
        "api/v1/redoc/",
        csp_exempt()(SpectacularRedocView.as_view(url_name="api-schema")),
        name="api-redoc",
    ),
    path("healthz", healthz, name="healthz"),
    # Stripe's signed webhooks (billing.webhooks; csrf-exempt, POST only).
    path("stripe/webhook/", stripe_webhook, name="stripe-webhook"),
    path("", include("console.urls")),
]

# JSON under /api/ for URLs that match no route, like every other error of the API.
handler404 = "vlinders.api.not_found"
