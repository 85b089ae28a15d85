"""URLs of the usage API, under an organisation like the tenants API (``tenants.api.urls.ORG``)."""

from django.urls import re_path

from billing.api.views import UsageViewSet
from tenants.api.urls import ORG

urlpatterns = [
    re_path(rf"^{ORG}/usage/$", UsageViewSet.as_view({"get": "report"}), name="usage"),
    re_path(rf"^{ORG}/usage\.csv$", UsageViewSet.as_view({"get": "export"}), name="usage-csv"),
]
