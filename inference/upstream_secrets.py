"""Upstream API keys of the catalog: encrypted at rest, and published encrypted for the data plane.

A model with the ``openai`` engine may carry an API key for its upstream. That key is a
credential of the platform's, so it is never stored, rendered or shown in plain text:

- **At rest.** ``CatalogModel.upstream_api_key`` holds a Fernet token, or ``""`` for no key. The
  services encrypt what they are given (``encrypt``); a database dump or backup holds no key.
  ``VLINDERS_SECRETS_KEY`` is a comma-separated list of Fernet keys (``MultiFernet``): the first
  encrypts, every one decrypts, so the key can be rotated (``reencrypt_all``).
- **To the data plane.** Not in the Serve config (it would show in every deployment revision,
  the Ray dashboard and the KubeRay manifest) but in Redis, after the change commits:
  ``<prefix>upstream:v1:<deployment name>`` holds the token re-encrypted under the *current*
  key (the first of ``VLINDERS_SECRETS_KEY``), so Redis never holds plain text either. The model
  server reads it with ``inference.serving.credentials.UpstreamCredentials`` (which has the same
  keys in the Ray cluster's environment) and re-reads it every few seconds, so a new key takes
  effect without a restart. The record is deleted when the key is cleared, the model stops
  using the ``openai`` engine, is renamed (the old name's) or is deleted.
- **Repair.** ``upstream_credentials_publish_all`` rewrites every record and deletes records of
  models that no longer have a key: the Celery beat task ``inference.publish_upstream_credentials``
  runs it periodically (a Redis that restarted empty, a publish lost to an outage) and
  ``serve apply`` before each apply.

The control plane never needs the plain key after it was given: publishing re-encrypts a token
(``MultiFernet.rotate``) without handing the plain text to any caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from uuid import UUID

import redis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import transaction

from inference.deployment import deployment_name
from inference.models import CatalogModel, EngineKind
from vlinders.redis import get_redis, redis_key

logger = logging.getLogger(__name__)

# The longest plain key accepted (its token is about 1.4 times as long).
MAX_KEY_CHARS = 1024
RECORD_VERSION = "v1"
# A set of every record name published, so stale records are found without scanning Redis.
_INDEX = ("upstream-index", RECORD_VERSION)


@lru_cache(maxsize=4)
def _fernet(keys: str) -> MultiFernet:
    return MultiFernet([Fernet(key.strip()) for key in keys.split(",") if key.strip()])


def _keys() -> MultiFernet:
    """The keys of ``settings.VLINDERS_SECRETS_KEY`` (first encrypts, all decrypt)."""
    return _fernet(str(settings.VLINDERS_SECRETS_KEY))


def encrypt(plaintext: str) -> str:
    """The Fernet token of ``plaintext`` under the current key (``""`` stays ``""``: no key)."""
    if not plaintext:
        return ""
    return _keys().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """The plain key of a stored token (``""`` for none). Raises ``InvalidToken`` when no key of
    ``VLINDERS_SECRETS_KEY`` opens it (the value is not a token, or its key was dropped)."""
    if not token:
        return ""
    return _keys().decrypt(token.encode()).decode()


def is_encrypted(value: str) -> bool:
    """Whether ``value`` is a token one of the current keys opens (the migration's test for a
    value it already encrypted; a plain key is never a valid token)."""
    try:
        _keys().decrypt(value.encode())
    except InvalidToken:
        return False
    return True


def reencrypt(token: str) -> str:
    """``token`` encrypted under the current key instead of whichever key made it."""
    if not token:
        return ""
    return _keys().rotate(token.encode()).decode()


# --- the data plane's copy in Redis -----------------------------------------------------------


def credential_record_name(model_name: str) -> str:
    """Where the model server of ``model_name`` finds its key:
    ``<prefix>upstream:v1:<deployment name>`` (``inference.serving.credentials``)."""
    return redis_key("upstream", RECORD_VERSION, deployment_name(model_name))


def _index_name() -> str:
    return redis_key(*_INDEX)


def _published_token(model: CatalogModel) -> str:
    """The record for ``model``: its token under the current key, or ``""`` for none."""
    if model.engine_kind != EngineKind.OPENAI or not model.upstream_api_key:
        return ""
    return reencrypt(model.upstream_api_key)


def _apply(pipe: redis.client.Pipeline, name: str, token: str) -> None:
    if token:
        pipe.set(name, token)
        pipe.sadd(_index_name(), name)
    else:
        pipe.delete(name)
        pipe.srem(_index_name(), name)


def upstream_credentials_publish(
    *, model_ids: Iterable[UUID], removed_names: Iterable[str]
) -> None:
    """Publish the committed state of the models ``model_ids`` (set, or delete when they have
    no key or no longer use the ``openai`` engine) and delete the records of ``removed_names``
    (deleted or renamed models), in one Redis transaction."""
    pipe = get_redis().pipeline(transaction=True)
    current: set[str] = set()
    for model in CatalogModel.objects.filter(pk__in=list(model_ids)):
        name = credential_record_name(model.name)
        current.add(name)
        _apply(pipe, name, _published_token(model))
    for model_name in removed_names:
        name = credential_record_name(model_name)
        if name not in current:
            _apply(pipe, name, "")
    pipe.execute()


def _guarded(what: str, publish: Callable[[], object]) -> None:
    try:
        publish()
    except (redis.RedisError, InvalidToken):
        logger.exception(
            "upstream credentials: publishing %s failed; the periodic republish "
            "(inference.publish_upstream_credentials) will repair it",
            what,
        )


def upstream_credentials_publish_on_commit(
    *, model_ids: Iterable[UUID] = (), removed_names: Iterable[str] = ()
) -> None:
    """After the current transaction commits, publish the models' keys (or delete their
    records) and delete the records of ``removed_names``. A failure (Redis down) is logged: the
    database stands, and the periodic republish repairs Redis."""
    ids, names = list(model_ids), list(removed_names)
    transaction.on_commit(
        lambda: _guarded(
            f"models {', '.join(map(str, ids)) or '-'} / removed {', '.join(names) or '-'}",
            lambda: upstream_credentials_publish(model_ids=ids, removed_names=names),
        )
    )


@dataclass(frozen=True)
class UpstreamPublishResult:
    published: int
    removed: int


def _names_with_keys() -> dict[str, CatalogModel]:
    models = CatalogModel.objects.filter(engine_kind=EngineKind.OPENAI).exclude(upstream_api_key="")
    return {credential_record_name(model.name): model for model in models}


def upstream_credentials_publish_all() -> UpstreamPublishResult:
    """Rewrite the record of every ``openai`` model that has a key and delete every record
    published earlier whose model has none now (deleted, cleared, renamed): the periodic
    repair, and what ``serve apply`` runs before applying. A stored key that no current key
    opens is logged and skipped (its record is left), so one bad row never stops the others.

    Stale records are found through the index set (``<prefix>upstream-index:v1``), not by
    scanning Redis. The models are read again just before deleting, so a model created while
    this ran keeps the record its own publish wrote.
    """
    client = get_redis()
    live = _names_with_keys()
    pipe = client.pipeline(transaction=True)
    published = 0
    for name, model in live.items():
        try:
            token = _published_token(model)
        except InvalidToken:
            # Its key was dropped from VLINDERS_SECRETS_KEY before the row was re-encrypted:
            # say which, keep whatever record there is, and publish the others.
            logger.error(
                "upstream credentials: no key of VLINDERS_SECRETS_KEY opens the stored key of "
                "model %s; set it again, or restore the key and run "
                "manage.py upstream_secrets reencrypt",
                model.name,
            )
            continue
        _apply(pipe, name, token)
        published += 1
    pipe.execute()
    indexed = {raw.decode() for raw in client.smembers(_index_name())}  # type: ignore[union-attr]
    stale = indexed - set(live)
    if stale:
        stale -= set(_names_with_keys())
    if stale:
        pipe = client.pipeline(transaction=True)
        for name in sorted(stale):
            _apply(pipe, name, "")
        pipe.execute()
    return UpstreamPublishResult(published=published, removed=len(stale))


def reencrypt_all() -> int:
    """Re-encrypt every stored key under the current key (after a new key was put first in
    ``VLINDERS_SECRETS_KEY``), then republish every record; returns how many were rewritten."""
    count = 0
    with transaction.atomic():
        for model in CatalogModel.objects.select_for_update().exclude(upstream_api_key=""):
            model.upstream_api_key = reencrypt(model.upstream_api_key)
            model.save(update_fields=["upstream_api_key"])
            count += 1
    upstream_credentials_publish_all()
    return count
