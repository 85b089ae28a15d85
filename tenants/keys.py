"""API-key secrets: format, generation and hashing.

A key looks like ``vlk_`` + 12 random base62 characters (the lookup prefix) + 40 random base62
characters (the secret): 56 characters, about 300 random bits. The recognisable ``vlk_`` start
lets secret scanners find leaked keys.

The stored hash is HMAC-SHA256(pepper, whole key), hex-encoded. The gateway computes the same
hash from a presented key to find its access-snapshot record (docs/access-snapshot.md), so this
function and the pepper are part of that contract.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from django.conf import settings

KEY_PREFIX = "vlk_"
LOOKUP_LENGTH = 12
SECRET_LENGTH = 40
KEY_LENGTH = len(KEY_PREFIX) + LOOKUP_LENGTH + SECRET_LENGTH
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class NewSecret:
    """A freshly generated key: ``plaintext`` is shown once and then forgotten."""

    plaintext: str
    lookup: str
    last_four: str
    secret_hash: str


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_key(plaintext: str, pepper: str | None = None) -> str:
    """Return the HMAC-SHA256 of a whole key under the pepper, as 64 hex characters."""
    key = (pepper if pepper is not None else settings.VLINDERS_KEY_PEPPER).encode()
    return hmac.new(key, plaintext.encode(), hashlib.sha256).hexdigest()


def generate() -> NewSecret:
    lookup = _random(LOOKUP_LENGTH)
    plaintext = f"{KEY_PREFIX}{lookup}{_random(SECRET_LENGTH)}"
    return NewSecret(
        plaintext=plaintext,
        lookup=lookup,
        last_four=plaintext[-4:],
        secret_hash=hash_key(plaintext),
    )


def parse_lookup(plaintext: str) -> str | None:
    """Return the lookup prefix of something shaped like a key, or ``None`` if it is not one."""
    if len(plaintext) != KEY_LENGTH or not plaintext.startswith(KEY_PREFIX):
        return None
    body = plaintext[len(KEY_PREFIX) :]
    if not all(char in _ALPHABET for char in body):
        return None
    return body[:LOOKUP_LENGTH]


def matches(plaintext: str, secret_hash: str) -> bool:
    """Compare a presented key with a stored hash in constant time."""
    return hmac.compare_digest(hash_key(plaintext), secret_hash)
