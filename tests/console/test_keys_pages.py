"""The API keys pages: the list (search, status, pagination, bounded queries), create with the
secret revealed once, edit, rotate and revoke; every view and POST with the role matrix, and the
services' audit records and access-snapshot publishing behind them."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from tenants import keys, services, snapshot
from tenants.models import ApiKey, AuditEvent, Role
from tests.factories import CatalogModelFactory, ModelAliasFactory

pytestmark = pytest.mark.django_db

LIST = "/orgs/acme/keys/"
NEW = "/orgs/acme/keys/new/"
EVERYONE = {"owner": 200, "admin": 200, "member": 200, "viewer": 200, "staff": 200}
SHUT = {"outsider": 404, "anonymous": 302}
# A key the owner created: admins and staff manage it, the member may not, the viewer reads only.
OWNERS_KEY = {"owner": 200, "admin": 200, "member": 403, "viewer": 403, "staff": 200} | SHUT


@pytest.fixture
def catalog(db):  # type: ignore[no-untyped-def]
    small = CatalogModelFactory(name="chat-small")
    CatalogModelFactory(name="chat-large")
    ModelAliasFactory(name="chat", target=small)


def make_key(org, user, *, role=Role.OWNER, name="ci", **settings) -> tuple[ApiKey, str]:  # type: ignore[no-untyped-def]
    return services.api_key_create(
        organization=org, name=name, created_by=user, actor_role=role, **settings
    )


def _secret_on(page: str) -> str:
    match = re.search(r'<code id="new-key-secret">([^<]+)</code>', page)
    assert match, "the reveal page holds the secret in #new-key-secret"
    return match.group(1)


def _form_token(client) -> str:  # type: ignore[no-untyped-def]
    page = client.get(NEW).content.decode()
    match = re.search(r'name="form_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


def _create_data(**overrides):  # type: ignore[no-untyped-def]
    return {"name": "ci", "scopes": ["inference"], "form_token": "t0ken"} | overrides


def page_of(response) -> str:  # type: ignore[no-untyped-def]
    return response.content.decode()


def _key_url(key: ApiKey, action: str) -> str:
    return f"{LIST}{key.pk}/{action}/"


# --- the list ----------------------------------------------------------------------------------


def test_every_member_sees_the_list(assert_matrix):
    assert_matrix(LIST, EVERYONE | SHUT)


def test_the_list_shows_each_keys_settings_and_never_a_secret(role_client, org, owner, catalog):
    expires = timezone.now() + timedelta(days=30)
    key, secret = make_key(
        org,
        owner,
        name="billing service",
        scopes=["inference", "management:read"],
        allowed_models=["chat-small", "chat"],
        expires_at=expires,
        requests_per_minute=60,
        tokens_per_minute=100_000,
        monthly_spend_budget=Decimal("12.5"),
    )
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    page = role_client("viewer").get(LIST).content.decode()
    assert "billing service" in page
    assert f"vlk_{key.prefix}…{secret[-4:]}" in page
    assert "inference, management:read" in page
    assert "chat, chat-small" in page
    assert "60 req/min" in page
    assert "100,000 tok/min" in page
    assert "$12.50/month" in page
    assert expires.strftime("%Y-%m-%d %H:%M") in page
    assert ">owner<" in page
    assert "Never" not in page.split(f'id="key-{key.pk}"')[1].split("</tr>")[0]
    assert secret not in page
    assert key.secret_hash not in page


def test_the_list_shows_every_status(role_client, org, owner):
    active, _ = make_key(org, owner, name="plain")
    rotating, _ = make_key(org, owner, name="rotating")
    services.api_key_rotate(
        api_key=rotating, actor_role=Role.OWNER, actor=owner, grace=timedelta(hours=1)
    )
    expired, _ = make_key(org, owner, name="old")
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    revoked, _ = make_key(org, owner, name="gone")
    services.api_key_revoke(api_key=revoked, actor_role=Role.OWNER, actor=owner)
    page = role_client("owner").get(LIST).content.decode()
    for key, status in [
        (active, "active"),
        (rotating, "rotating"),
        (expired, "expired"),
        (revoked, "revoked"),
    ]:
        assert f'id="key-{key.pk}" data-status="{status}"' in page
    assert "grace until" in page


def test_search_by_name_or_prefix_and_filters(role_client, org, owner, member):
    alpha, alpha_secret = make_key(org, owner, name="Alpha service")
    beta, _ = make_key(org, member, role=Role.MEMBER, name="beta job")
    services.api_key_revoke(api_key=beta, actor_role=Role.OWNER, actor=owner)
    client = role_client("member")

    def shown(query: str) -> set[str]:
        page = client.get(f"{LIST}?{query}").content.decode()
        return set(re.findall(r'id="key-([0-9a-f-]+)"', page))

    assert shown("q=alpha") == {str(alpha.pk)}
    assert shown(f"q=vlk_{alpha.prefix[:6]}") == {str(alpha.pk)}
    assert shown(f"q={alpha_secret[:16]}…{alpha_secret[-4:]}") == {str(alpha.pk)}
    assert shown("status=revoked") == {str(beta.pk)}
    assert shown("status=active") == {str(alpha.pk)}
    assert shown("mine=1") == {str(beta.pk)}
    assert shown("q=nothing-like-it") == set()
    assert shown("status=bogus&q=beta") == {str(beta.pk)}  # a bad filter is dropped, alone


def test_a_few_hundred_keys_are_paginated_with_a_bounded_number_of_queries(
    role_client, org, owner, member, django_assert_max_num_queries
):
    ApiKey.objects.bulk_create(
        ApiKey(
            organization=org,
            name=f"key {i:03d}",
            created_by=owner if i % 2 else member,
            prefix=f"p{i:011d}",
            last_four="abcd",
            secret_hash=f"{i:064x}",
            scopes=["inference"],
            requests_per_minute=i,
            created_at=timezone.now() - timedelta(minutes=i),
        )
        for i in range(300)
    )
    client = role_client("member")
    client.get(LIST)  # the session and the like, once
    with django_assert_max_num_queries(10):
        first = client.get(LIST).content.decode()
    with django_assert_max_num_queries(10):
        last = client.get(f"{LIST}?page=6&status=active").content.decode()
    assert "300 keys." in first
    assert len(re.findall(r'id="key-', first)) == 50
    assert "key 000" in first
    assert "key 050" not in first
    assert "Page 1 of 6" in first
    assert "page=2" in first
    assert "key 299" in last
    assert "Page 6 of 6" in last
    assert "status=active&amp;page=5" in last
    # The member's own keys carry controls, the owner's do not.
    own = first.split('id="key-', 1)[1].split("</tr>")[0]
    assert "key 000" in own
    assert "Revoke key 000" in own


def test_htmx_gets_only_the_results(role_client, org, owner):
    make_key(org, owner, name="one")
    response = role_client("owner").get(
        f"{LIST}?q=one", headers={"HX-Request": "true", "HX-Target": "keys-results"}
    )
    page = response.content.decode()
    assert page.lstrip().startswith('<div id="keys-results">')
    assert "<html" not in page
    assert "one" in page


def test_controls_follow_the_role_and_whose_key_it_is(role_client, org, owner, member):
    owners, _ = make_key(org, owner, name="owners")
    members, _ = make_key(org, member, role=Role.MEMBER, name="members")

    def controls(role: str) -> set[str]:
        page = role_client(role).get(LIST).content.decode()
        return set(re.findall(r'aria-label="((?:Edit|Rotate|Revoke) \w+)"', page)) | (
            {"New key"} if f'href="{NEW}"' in page else set()
        )

    everything = {
        f"{verb} {name}" for verb in ("Edit", "Rotate", "Revoke") for name in ("owners", "members")
    }
    assert controls("owner") == everything | {"New key"}
    assert controls("admin") == everything | {"New key"}
    assert controls("member") == {"Edit members", "Rotate members", "Revoke members", "New key"}
    assert controls("viewer") == set()
    viewer_page = role_client("viewer").get(LIST).content.decode()
    assert '<form class="inline" method="post" action="/orgs/acme/keys/' not in viewer_page
    assert str(owners.pk) in viewer_page
    assert str(members.pk) in viewer_page


# --- create ------------------------------------------------------------------------------------


def test_the_create_form_is_for_members_and_up(assert_matrix):
    assert_matrix(
        NEW, {"owner": 200, "admin": 200, "member": 200, "viewer": 403, "staff": 200} | SHUT
    )


def test_creating_is_for_members_and_up(assert_matrix, org):
    assert_matrix(
        NEW,
        {"owner": 201, "admin": 201, "member": 201, "viewer": 403, "staff": 201} | SHUT,
        method="post",
        data=_create_data(),
    )
    assert sorted(ApiKey.objects.values_list("created_by__username", flat=True)) == [
        "admin",
        "member",
        "owner",
        "staff",
    ]


def test_the_form_offers_the_scopes_of_the_role_and_the_catalogs_models(role_client, catalog):
    member_form = role_client("member").get(NEW).content.decode()
    admin_form = role_client("admin").get(NEW).content.decode()
    assert 'value="management:read"' in member_form
    assert 'value="management:write"' not in member_form
    assert 'value="management:write"' in admin_form
    for name in ("chat", "chat-large", "chat-small"):
        assert f'name="allowed_models" value="{name}"' in member_form
    assert "chat (→ chat-small)" in member_form
    for label in (
        '<label for="id_name">Name</label>',
        "Requests per minute",
        "Monthly spend budget (USD)",
        '<label for="id_expires_at">Expires (UTC)</label>',
        "<legend>Scopes</legend>",
        "<legend>Allowed models</legend>",
        ">Create key</button>",
    ):
        assert label in member_form


def test_the_secret_is_revealed_once_and_never_stored(role_client, org, member, catalog, settings):
    settings.VLINDERS_GATEWAY_PUBLIC_URL = "https://gateway.example.test/v1"
    client = role_client("member")
    response = client.post(
        NEW,
        _create_data(
            name="notebook",
            form_token=_form_token(client),
            allowed_models=["chat"],
            requests_per_minute="30",
            monthly_spend_budget="5.25",
            expires_at=(timezone.now() + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S"),
        ),
    )
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    assert not response.has_header("Location")
    page = response.content.decode()
    secret = _secret_on(page)
    key = ApiKey.objects.get(organization=org)
    assert key.secret_hash == keys.hash_key(secret)
    assert (key.name, key.created_by, key.allowed_models) == ("notebook", member, ["chat"])
    assert (key.requests_per_minute, key.monthly_spend_budget) == (30, Decimal("5.25"))
    assert key.expires_at is not None
    assert 'data-copy="new-key-secret"' in page
    snippet = re.search(r'<code id="new-key-snippet">(.*?)</code>', page, re.S)
    assert snippet
    code = html.unescape(snippet.group(1))
    assert 'base_url="https://gateway.example.test/v1"' in code
    assert f'api_key="{secret}"' in code
    assert 'model="chat"' in code
    assert "from openai import OpenAI" in code
    # Never again: not in the session, not in a message, not on any later page.
    assert secret not in json.dumps(dict(client.session.items()), default=str)
    for later in (LIST, f"{LIST}?q=notebook", _key_url(key, "edit"), _key_url(key, "rotate")):
        assert secret not in client.get(later).content.decode()
    event = AuditEvent.objects.get(action="api_key.created")
    assert (event.actor, event.target_id) == (member, str(key.pk))
    assert event.after["name"] == "notebook"
    assert secret not in json.dumps(event.after)


def test_sending_the_form_again_creates_nothing(role_client, org):
    client = role_client("owner")
    data = _create_data(form_token=_form_token(client))
    assert client.post(NEW, data).status_code == 201
    again = client.post(NEW, data)
    assert again.status_code == 409
    assert "already sent" in again.content.decode()
    assert ApiKey.objects.filter(organization=org).count() == 1
    assert client.post(NEW, _create_data(form_token=_form_token(client))).status_code == 201


def test_a_member_cannot_grant_management_write(role_client, org):
    response = role_client("member").post(NEW, _create_data(scopes=["management:write"]))
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"name": ""}, "name", "This field is required."),
        ({"scopes": []}, "scopes", "This field is required."),
        ({"allowed_models": ["nope"]}, "allowed_models", "Select a valid choice."),
        ({"requests_per_minute": "-1"}, "requests_per_minute", "greater than or equal to 0"),
        ({"tokens_per_minute": "lots"}, "tokens_per_minute", "Enter a whole number."),
        ({"max_concurrent_requests": str(2**40)}, "max_concurrent_requests", "less than or equal"),
        ({"monthly_spend_budget": "1.23456"}, "monthly_spend_budget", "decimal places"),
        ({"expires_at": "yesterday"}, "expires_at", "Enter a valid date/time."),
        ({"expires_at": "2001-01-01T00:00:00"}, "expires_at", "Must be in the future."),
        ({"monthly_token_budget": "2000"}, "monthly_token_budget", "May only tighten"),
    ],
)
def test_bad_input_is_a_form_error_next_to_its_field(
    role_client, org, catalog, data, field, message
):
    org.monthly_token_budget = 1000
    org.save()
    response = role_client("owner").post(NEW, _create_data(**data))
    assert response.status_code == 400
    errors = re.search(
        rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', page_of(response), re.S
    )
    assert errors
    assert message in errors.group(1)
    assert not ApiKey.objects.exists()


# --- edit --------------------------------------------------------------------------------------


def test_the_edit_form_matrix(assert_matrix, org, owner):
    key, _ = make_key(org, owner)
    assert_matrix(_key_url(key, "edit"), OWNERS_KEY)


def test_editing_matrix(assert_matrix, org, owner):
    key, _ = make_key(org, owner)
    assert_matrix(
        _key_url(key, "edit"),
        {"owner": 302, "admin": 302, "member": 403, "viewer": 403, "staff": 302} | SHUT,
        method="post",
        data={"name": "renamed"},
    )
    key.refresh_from_db()
    assert key.name == "renamed"


def test_a_member_edits_their_own_key_and_the_service_audits_what_changed(
    role_client, org, member, catalog
):
    key, _ = make_key(
        org, member, role=Role.MEMBER, allowed_models=["chat"], requests_per_minute=10
    )
    client = role_client("member")
    form = client.get(_key_url(key, "edit"))
    assert form.status_code == 200
    assert 'value="10"' in form.content.decode()
    expires = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    response = client.post(
        _key_url(key, "edit"),
        {
            "name": "renamed",
            "allowed_models": ["chat", "chat-large"],
            "requests_per_minute": "10",
            "tokens_per_minute": "5000",
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    assert response.status_code == 302
    assert response["Location"] == LIST
    key.refresh_from_db()
    assert key.name == "renamed"
    assert key.allowed_models == ["chat", "chat-large"]
    assert (key.requests_per_minute, key.tokens_per_minute) == (10, 5000)
    assert key.expires_at == expires
    event = AuditEvent.objects.get(action="api_key.updated")
    assert event.actor == member
    assert set(event.before) == {"name", "allowed_models", "tokens_per_minute", "expires_at"}
    assert event.after["name"] == "renamed"
    assert "Saved “renamed”" in client.get(LIST).content.decode()


def test_saving_an_unchanged_form_changes_and_records_nothing(role_client, org, owner):
    key, _ = make_key(
        org,
        owner,
        monthly_spend_budget=Decimal("10"),
        expires_at=timezone.now() + timedelta(days=3, microseconds=123),
    )
    client = role_client("owner")
    page = client.get(_key_url(key, "edit")).content.decode()
    expires = re.search(r'name="expires_at" value="([^"]+)"', page)
    assert expires
    response = client.post(
        _key_url(key, "edit"),
        {"name": "ci", "monthly_spend_budget": "10.00", "expires_at": expires.group(1)},
    )
    assert response.status_code == 302
    assert not AuditEvent.objects.filter(action="api_key.updated").exists()


def test_a_model_the_organisation_lost_is_shown_so_it_can_be_unticked(
    role_client, org, owner, catalog
):
    key, _ = make_key(org, owner, allowed_models=["chat-large"])
    from inference.models import CatalogModel

    CatalogModel.objects.filter(name="chat-large").update(status=CatalogModel.Status.DISABLED)
    client = role_client("owner")
    assert "chat-large (no longer available)" in client.get(_key_url(key, "edit")).content.decode()
    kept = client.post(_key_url(key, "edit"), {"name": "x", "allowed_models": ["chat-large"]})
    assert kept.status_code == 400
    assert "Not available to this organisation: chat-large." in kept.content.decode()
    assert client.post(_key_url(key, "edit"), {"name": "x"}).status_code == 302


def test_a_revoked_key_cannot_be_edited_and_says_why(role_client, org, owner):
    key, _ = make_key(org, owner)
    services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=owner)
    response = role_client("owner").post(_key_url(key, "edit"), {"name": "back"})
    assert response.status_code == 400
    assert "A revoked key cannot be changed." in response.content.decode()


# --- rotate ------------------------------------------------------------------------------------


def test_the_rotate_form_matrix(assert_matrix, org, owner):
    key, _ = make_key(org, owner)
    assert_matrix(_key_url(key, "rotate"), OWNERS_KEY)


def test_rotating_matrix(role_client, org, owner):
    """A fresh key of the owner's for each role (a key rotates once)."""
    expected = {"owner": 201, "admin": 201, "member": 403, "viewer": 403, "staff": 201} | SHUT
    seen = {}
    for role in expected:
        key, _ = make_key(org, owner, name=f"for {role}")
        seen[role] = role_client(role).post(_key_url(key, "rotate"), {"grace_seconds": "0"})
        key.refresh_from_db()
        assert (key.replaced_by_id is not None) == (expected[role] == 201)
    assert {role: response.status_code for role, response in seen.items()} == expected


def test_rotating_with_a_grace_period_reveals_the_new_secret_once(role_client, org, member):
    old, old_secret = make_key(org, member, role=Role.MEMBER, requests_per_minute=7)
    client = role_client("member")
    page = client.get(_key_url(old, "rotate")).content.decode()
    assert '<label for="id_grace_seconds">Grace period</label>' in page
    assert ">Rotate key</button>" in page
    response = client.post(_key_url(old, "rotate"), {"grace_seconds": "3600"})
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    secret = _secret_on(response.content.decode())
    old.refresh_from_db()
    new = ApiKey.objects.get(pk=old.replaced_by_id)
    assert new.secret_hash == keys.hash_key(secret)
    assert secret != old_secret
    assert new.requests_per_minute == 7
    assert new.created_by == member
    assert old.revoked_at is None
    assert old.expires_at is not None
    assert timedelta(minutes=59) < old.expires_at - timezone.now() <= timedelta(hours=1)
    assert "keeps working until" in response.content.decode()
    event = AuditEvent.objects.get(action="api_key.rotated")
    assert event.actor == member
    assert event.after["grace_seconds"] == 3600
    listed = client.get(LIST).content.decode()
    assert f'id="key-{old.pk}" data-status="rotating"' in listed
    assert secret not in listed


def test_rotating_twice_or_with_a_made_up_grace_is_a_form_error(role_client, org, owner):
    key, _ = make_key(org, owner)
    client = role_client("owner")
    assert client.post(_key_url(key, "rotate"), {"grace_seconds": "999"}).status_code == 400
    assert client.post(_key_url(key, "rotate"), {"grace_seconds": "0"}).status_code == 201
    again = client.post(_key_url(key, "rotate"), {"grace_seconds": "0"})
    assert again.status_code == 400
    assert "Only an active key that was not rotated can be rotated." in again.content.decode()
    assert ApiKey.objects.count() == 2


# --- revoke ------------------------------------------------------------------------------------


def test_the_revoke_confirmation_matrix(assert_matrix, org, owner):
    key, _ = make_key(org, owner)
    assert_matrix(_key_url(key, "revoke"), OWNERS_KEY)


def test_revoking_matrix(assert_matrix, org, owner):
    key, _ = make_key(org, owner)
    assert_matrix(
        _key_url(key, "revoke"),
        {"owner": 302, "admin": 302, "member": 403, "viewer": 403, "staff": 302} | SHUT,
        method="post",
        data={"confirm": "yes"},
    )
    key.refresh_from_db()
    assert key.status == ApiKey.Status.REVOKED
    assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1  # again: a no-op


def test_revoking_asks_first_without_javascript(role_client, org, member):
    key, _ = make_key(org, member, role=Role.MEMBER, name="laptop")
    client = role_client("member")
    listed = client.get(f"{LIST}?q=lap").content.decode()
    assert 'data-confirm="Revoke “laptop”' in listed
    assert 'name="confirm" value="" data-confirmed-value="yes"' in listed
    asked = client.post(_key_url(key, "revoke"), {"confirm": "", "next": f"{LIST}?q=lap"})
    assert asked.status_code == 200
    assert ">Revoke key</button>" in asked.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None
    done = client.post(_key_url(key, "revoke"), {"confirm": "yes", "next": f"{LIST}?q=lap"})
    assert done.status_code == 302
    assert done["Location"] == f"{LIST}?q=lap"
    key.refresh_from_db()
    assert key.status == ApiKey.Status.REVOKED
    event = AuditEvent.objects.get(action="api_key.revoked")
    assert (event.actor, event.target_id) == (member, str(key.pk))
    assert "Revoked “laptop”" in client.get(LIST).content.decode()
    elsewhere = client.post(
        _key_url(key, "revoke"), {"confirm": "yes", "next": "https://evil.test/"}
    )
    assert elsewhere["Location"] == LIST


def test_revoking_publishes_to_the_gateways_access_snapshot(
    role_client, org, owner, redis_client, django_capture_on_commit_callbacks
):
    client = role_client("owner")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(NEW, _create_data(form_token=_form_token(client)))
    secret = _secret_on(response.content.decode())
    record_name = snapshot.key_record_name(keys.hash_key(secret))
    assert json.loads(redis_client.get(record_name))["status"] == "active"
    key = ApiKey.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(_key_url(key, "revoke"), {"confirm": "yes"})
    assert json.loads(redis_client.get(record_name))["status"] == "revoked"


# --- every page --------------------------------------------------------------------------------


def test_one_organisations_key_is_404_in_another(role_client, outsider):
    theirs, _ = make_key(outsider.memberships.get().organization, outsider)
    client = role_client("owner")
    for action in ("edit", "rotate", "revoke"):
        assert client.get(_key_url(theirs, action)).status_code == 404
        assert client.post(_key_url(theirs, action), {"confirm": "yes"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert theirs.replaced_by_id is None


def test_the_pages_have_no_inline_script_style_or_handlers(role_client, org, owner, catalog):
    key, _ = make_key(org, owner)
    client = role_client("owner")
    pages = [
        client.get(url)
        for url in (LIST, NEW, *(_key_url(key, a) for a in ("edit", "rotate", "revoke")))
    ]
    pages.append(client.post(NEW, _create_data(form_token=_form_token(client))))
    for response in pages:
        page = response.content.decode()
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) is None
        assert 'style="' not in page
        assert re.search(r"\son[a-z]+=", page) is None
        assert page.count("csrfmiddlewaretoken") >= page.count('method="post"')


def test_staff_act_as_owners_and_are_recorded_as_themselves(role_client, org):
    client = role_client("staff")
    client.post(NEW, _create_data(form_token=_form_token(client)))
    key = ApiKey.objects.get()
    assert key.created_by == User.objects.get(username="staff")


@pytest.mark.skipif(not hasattr(ApiKey, "Source"), reason="no playground credentials here")
def test_a_playground_credential_is_listed_marked_and_only_revocable(role_client, org, owner):
    key, _ = make_key(org, owner, name="Console playground · owner")
    ApiKey.objects.filter(pk=key.pk).update(source="console")
    page = role_client("owner").get(LIST).content.decode()
    row = page.split(f'id="key-{key.pk}"')[1].split("</tr>")[0]
    assert ">Playground</span>" in row
    assert 'aria-label="Revoke Console playground · owner"' in row
    assert 'aria-label="Edit' not in row
    assert 'aria-label="Rotate' not in row
