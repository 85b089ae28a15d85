"""Key format, hashing and constant-time comparison."""

import hmac

import pytest

from tenants import keys


def test_generated_key_has_recognisable_prefix_and_stored_parts():
    secret = keys.generate()
    assert secret.plaintext.startswith("vlk_")
    assert len(secret.plaintext) == keys.KEY_LENGTH
    assert secret.lookup == secret.plaintext[4:16]
    assert secret.last_four == secret.plaintext[-4:]
    assert secret.secret_hash == keys.hash_key(secret.plaintext)
    assert secret.plaintext not in secret.secret_hash


def test_keys_are_unique():
    assert len({keys.generate().plaintext for _ in range(200)}) == 200


def test_hash_is_hmac_sha256_under_the_pepper(settings):
    settings.VLINDERS_KEY_PEPPER = "pepper-one"
    first = keys.hash_key("vlk_x")
    expected = hmac.new(b"pepper-one", b"vlk_x", "sha256").hexdigest()
    assert first == expected
    settings.VLINDERS_KEY_PEPPER = "pepper-two"
    assert keys.hash_key("vlk_x") != first


def test_matches_only_the_right_key():
    secret = keys.generate()
    assert keys.matches(secret.plaintext, secret.secret_hash)
    tampered = secret.plaintext[:-1] + ("A" if secret.plaintext[-1] != "A" else "B")
    assert not keys.matches(tampered, secret.secret_hash)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "vlk_",
        "sk-abc",
        "vlk_" + "a" * 51,
        "vlk_" + "a" * 53,
        "vlk_" + "!" * 52,
        "xyz_" + "a" * 52,
    ],
)
def test_parse_lookup_refuses_what_is_not_a_key(candidate):
    assert keys.parse_lookup(candidate) is None


def test_parse_lookup_of_a_real_key():
    secret = keys.generate()
    assert keys.parse_lookup(secret.plaintext) == secret.lookup
