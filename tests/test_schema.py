"""The OpenAPI schema is generated without errors and the interactive docs are served."""

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_schema_validates(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/v1/orgs/{org_slug}/keys/", "/api/v1/orgs/{org_slug}/keys/{id}/rotate/"):
        assert path in text


def test_schema_and_docs_are_served(as_owner):
    schema = as_owner.get("/api/v1/schema/")
    assert schema.status_code == 200
    assert b"openapi: 3" in schema.content
    docs = as_owner.get("/api/v1/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content


def test_healthz(anonymous):
    assert anonymous.get("/healthz").json() == {"status": "ok"}
