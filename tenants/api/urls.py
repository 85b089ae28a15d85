from django.urls import re_path
from rest_framework.routers import SimpleRouter

from tenants.api import views

ORG = r"orgs/(?P<org_slug>[-a-zA-Z0-9_]+)"

router = SimpleRouter()
router.register("orgs", views.OrganizationViewSet, basename="organization")
router.register(f"{ORG}/members", views.MembershipViewSet, basename="membership")
router.register(f"{ORG}/keys", views.ApiKeyViewSet, basename="apikey")
router.register(f"{ORG}/models", views.AvailableModelViewSet, basename="available-model")
router.register(f"{ORG}/invitations", views.InvitationViewSet, basename="invitation")

urlpatterns = [
    *router.urls,
    re_path(rf"^{ORG}/audit/$", views.AuditEventViewSet.as_view({"get": "list"}), name="audit"),
    re_path(
        rf"^{ORG}/audit\.csv$",
        views.AuditEventViewSet.as_view({"get": "export"}),
        name="audit-csv",
    ),
]
