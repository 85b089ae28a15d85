"""Upstream API keys: encrypted at rest, published encrypted to Redis after each change, read back
by the data plane's reader; rotation of VLINDERS_SECRETS_KEY; the migration of plain keys."""

from __future__ import annotations

import asyncio
import importlib

import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps as django_apps
from django.conf import settings

from inference import services, upstream_secrets
from inference.deployment import deployment_name
from inference.models import CatalogModel
from inference.serving.credentials import UpstreamCredentials
from tests.factories import CatalogModelFactory

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

SECRET = "sk-upstream-never-in-plain-text"
OPENAI = {
    "engine_kind": "openai",
    "context_length": 8192,
    "upstream_base_url": "https://upstream.example.test/v1",
    "upstream_model": "gpt-4o",
}


@pytest.fixture
def secrets_key(settings):  # type: ignore[no-untyped-def]
    settings.VLINDERS_SECRETS_KEY = Fernet.generate_key().decode()
    return settings.VLINDERS_SECRETS_KEY


def record_name(model_name: str) -> str:
    # The name the data plane reads, spelt as the contract says.
    return f"{settings.VLINDERS_REDIS_PREFIX}upstream:v1:{deployment_name(model_name)}"


def data_plane_reads(model_name: str) -> str:
    async def read() -> str:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return await UpstreamCredentials(
                client,
                prefix=settings.VLINDERS_REDIS_PREFIX,
                deployment=deployment_name(model_name),
                keys=settings.VLINDERS_SECRETS_KEY,
            ).api_key()
        finally:
            await client.aclose()

    return asyncio.run(read())


def create(name: str = "up", **fields):  # type: ignore[no-untyped-def]
    return services.catalog_model_create(name=name, **{**OPENAI, **fields})


# --- at rest -----------------------------------------------------------------------------------


def test_encrypt_and_decrypt(secrets_key) -> None:  # type: ignore[no-untyped-def]
    token = upstream_secrets.encrypt(SECRET)
    assert SECRET not in token
    assert token != upstream_secrets.encrypt(SECRET)  # a fresh IV each time
    assert upstream_secrets.decrypt(token) == SECRET
    assert upstream_secrets.is_encrypted(token)
    assert not upstream_secrets.is_encrypted(SECRET)
    assert upstream_secrets.encrypt("") == upstream_secrets.decrypt("") == ""


def test_the_service_stores_only_the_token(secrets_key, redis_client) -> None:  # type: ignore[no-untyped-def]
    model = create(upstream_api_key=SECRET)
    stored = CatalogModel.objects.values_list("upstream_api_key", flat=True).get(pk=model.pk)
    assert SECRET not in stored
    assert upstream_secrets.decrypt(stored) == SECRET


def test_a_key_longer_than_the_limit_is_refused(secrets_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(services.ValidationError) as caught:
        create(upstream_api_key="k" * 1025)
    assert "upstream_api_key" in caught.value.message_dict
    create(upstream_api_key="k" * 1024)  # the limit itself is fine (its token is longer)


def test_rotation_first_key_encrypts_every_key_decrypts(settings, redis_client) -> None:  # type: ignore[no-untyped-def]
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.VLINDERS_SECRETS_KEY = old
    model = create(upstream_api_key=SECRET)
    settings.VLINDERS_SECRETS_KEY = f"{new},{old}"
    assert upstream_secrets.decrypt(model.upstream_api_key) == SECRET  # the old token opens

    assert upstream_secrets.reencrypt_all() == 1
    model.refresh_from_db()
    settings.VLINDERS_SECRETS_KEY = new  # the old key dropped
    assert upstream_secrets.decrypt(model.upstream_api_key) == SECRET
    assert data_plane_reads("up") == SECRET  # republished under the new key
    settings.VLINDERS_SECRETS_KEY = old
    with pytest.raises(InvalidToken):
        upstream_secrets.decrypt(model.upstream_api_key)


# --- to the data plane -------------------------------------------------------------------------


def test_the_key_is_published_after_commit_encrypted_for_the_data_plane(
    secrets_key, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        create(upstream_api_key=SECRET)
    assert redis_client.get(record_name("up")) is None  # nothing before the commit
    for callback in callbacks:
        callback()
    raw = redis_client.get(record_name("up"))
    assert raw is not None
    assert SECRET.encode() not in raw  # Redis holds no plain key
    # Encrypted under the current (first) key: the data plane opens it with that key alone.
    assert Fernet(secrets_key).decrypt(raw).decode() == SECRET
    assert data_plane_reads("up") == SECRET


def test_changing_the_key_republishes_it_and_clearing_deletes_it(
    secrets_key, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        model = create(upstream_api_key=SECRET)
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(model=model, upstream_api_key="sk-rotated")
    assert data_plane_reads("up") == "sk-rotated"
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(model=model, description="kept")
    assert data_plane_reads("up") == "sk-rotated"
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(model=model, upstream_api_key="")
    assert redis_client.get(record_name("up")) is None
    assert data_plane_reads("up") == ""


def test_renaming_moves_the_record_and_leaving_the_engine_deletes_it(
    secrets_key, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        model = create(upstream_api_key=SECRET)
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(model=model, name="up-2")
    assert redis_client.get(record_name("up")) is None
    assert data_plane_reads("up-2") == SECRET
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_update(
            model=model,
            engine_kind="synthetic",
            upstream_base_url="",
            upstream_model="",
            upstream_api_key="",
        )
    assert redis_client.get(record_name("up-2")) is None


def test_deleting_the_model_deletes_the_record(
    secrets_key, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        model = create(upstream_api_key=SECRET)
        other = create("other", upstream_api_key="sk-other")
    with django_capture_on_commit_callbacks(execute=True):
        services.catalog_model_delete(model=model)
    assert redis_client.get(record_name("up")) is None
    assert data_plane_reads("other") == "sk-other"
    assert other.pk


def test_a_rolled_back_change_is_not_published(
    secrets_key, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        create(upstream_api_key=SECRET)
    del callbacks  # the transaction is abandoned
    assert redis_client.get(record_name("up")) is None


def test_publish_all_repairs_a_wiped_redis_and_removes_stale_records(
    secrets_key, redis_client, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        create(upstream_api_key=SECRET)
        gone = create("gone", upstream_api_key="sk-gone")
        create("keyless")
    # The model is deleted while Redis is unreachable: its record outlives it.
    CatalogModel.objects.filter(pk=gone.pk).delete()
    redis_client.delete(record_name("up"))  # and another record was lost

    result = upstream_secrets.upstream_credentials_publish_all()

    assert (result.published, result.removed) == (1, 1)
    assert data_plane_reads("up") == SECRET
    assert redis_client.get(record_name("gone")) is None
    assert redis_client.get(record_name("keyless")) is None
    assert upstream_secrets.upstream_credentials_publish_all().removed == 0


def test_publish_all_is_the_celery_task(secrets_key, redis_client) -> None:  # type: ignore[no-untyped-def]
    from inference.tasks import publish_upstream_credentials

    create(upstream_api_key=SECRET)  # not published: no commit callbacks run here
    assert publish_upstream_credentials() == {"published": 1, "removed": 0}
    assert data_plane_reads("up") == SECRET


def test_a_publish_failure_is_logged_not_raised(
    secrets_key, settings, caplog, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    from vlinders.redis import _client

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    _client.cache_clear()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            model = create(upstream_api_key=SECRET)
    finally:
        _client.cache_clear()
    assert model.pk is not None  # the database write stands
    assert "periodic republish" in caplog.text
    assert SECRET not in caplog.text


# --- the migration of plain keys ---------------------------------------------------------------

migration = importlib.import_module("inference.migrations.0004_encrypt_upstream_api_keys")


def test_the_migration_encrypts_plain_keys_once_and_reverses(secrets_key) -> None:  # type: ignore[no-untyped-def]
    plain = CatalogModelFactory(
        name="legacy", engine_kind="openai", engine_args={}, upstream_api_key=SECRET
    )
    keyless = CatalogModelFactory(name="keyless")

    migration.encrypt_plain_keys(django_apps, None)
    plain.refresh_from_db()
    token = plain.upstream_api_key
    assert SECRET not in token
    assert upstream_secrets.decrypt(token) == SECRET
    migration.encrypt_plain_keys(django_apps, None)  # a second run changes nothing
    plain.refresh_from_db()
    assert plain.upstream_api_key == token
    keyless.refresh_from_db()
    assert keyless.upstream_api_key == ""

    migration.decrypt_tokens(django_apps, None)
    plain.refresh_from_db()
    assert plain.upstream_api_key == SECRET


def test_the_command_reencrypts_and_publishes(settings, redis_client) -> None:  # type: ignore[no-untyped-def]
    from io import StringIO

    from django.core.management import call_command

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.VLINDERS_SECRETS_KEY = old
    create(upstream_api_key=SECRET)
    settings.VLINDERS_SECRETS_KEY = f"{new},{old}"
    out = StringIO()
    call_command("upstream_secrets", "reencrypt", stdout=out)
    assert "Re-encrypted 1 upstream API keys" in out.getvalue()
    assert "Published 1 upstream credentials" in out.getvalue()
    settings.VLINDERS_SECRETS_KEY = new
    assert data_plane_reads("up") == SECRET


def test_publish_all_skips_a_key_no_current_key_opens(secrets_key, redis_client, caplog) -> None:  # type: ignore[no-untyped-def]
    create(upstream_api_key=SECRET)
    lost = Fernet(Fernet.generate_key()).encrypt(b"sk-lost").decode()
    CatalogModelFactory(name="lost", upstream_api_key=lost, **{**OPENAI, "engine_args": {}})
    result = upstream_secrets.upstream_credentials_publish_all()
    assert result.published == 1
    assert data_plane_reads("up") == SECRET
    assert redis_client.get(record_name("lost")) is None
    assert "opens the stored key of model lost" in caplog.text
