"""Every refusal is an OpenAI-shaped error with the right status, never a 500."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.ray]


def _raw(gateway, path, body: bytes, key: str | None, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(gateway.base_url + path, body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def _assert_openai_error(body, *, type_, code=None, param=None):
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["type"] == type_
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param


def test_no_key_is_401(gateway, catalog):
    status, headers, body = _raw(gateway, "/v1/chat/completions", b"{}", None)
    assert status == 401
    assert headers["x-request-id"]
    _assert_openai_error(body, type_="invalid_request_error", code="missing_api_key")


@pytest.mark.parametrize("key", ["sk-not-ours", "vlk_" + "A" * 52, "vlk_short"])
def test_wrong_key_is_401(gateway, catalog, key):
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_key_without_inference_scope_is_403(gateway, make_tenant):
    _, _, secret = make_tenant(scopes=["management:read"])
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="syn-fast", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "missing_scope"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_model_of_another_organisation_is_404_not_403(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="syn-private", messages=[{"role": "user", "content": "x"}]
        )


def test_model_not_allowed_for_the_key_is_403(gateway, make_tenant):
    _, _, secret = make_tenant(allowed_models=["syn-fast"])
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="syn-slow", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.code == "model_not_allowed"
    client.chat.completions.create(model="syn-fast", messages=[{"role": "user", "content": "x"}])


def test_malformed_json_is_400(gateway, tenant):
    status, _, body = _raw(gateway, "/v1/chat/completions", b'{"model": "syn-fast",', tenant[2])
    assert status == 400
    _assert_openai_error(body, type_="invalid_request_error", code="invalid_json")
    status, _, body = _raw(gateway, "/v1/chat/completions", b"[1, 2]", tenant[2])
    assert status == 400


def test_huge_body_is_413(gateway, tenant):
    big = json.dumps({"model": "syn-fast", "messages": [{"role": "user", "content": "x" * 70_000}]})
    status, _, body = _raw(gateway, "/v1/chat/completions", big.encode(), tenant[2])
    assert status == 413
    _assert_openai_error(body, type_="invalid_request_error", code="request_too_large")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": 99}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": 42}, "model"),
    ],
)
def test_invalid_parameters_are_400_naming_the_param(client, extra, param):
    body = {"model": "syn-fast", "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.param == param


def test_unknown_path_is_an_openai_shaped_404(gateway):
    status, body = gateway.get("/v1/nothing-here")
    assert status == 404
    _assert_openai_error(json.loads(body), type_="invalid_request_error")


def test_health(gateway):
    status, body = gateway.get("/health")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["redis"] is True


@pytest.mark.parametrize("model", ["syn-fast", "upstream-syn"])
@pytest.mark.parametrize("stream", [False, True])
def test_engine_validation_comes_back_as_an_openai_400(client, model, stream):
    """The engine's own refusal crosses Ray (and an upstream hop) as a 400 naming the param;
    for a stream too, since the gateway waits for the engine's first message before answering."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], logprobs=True, stream=stream
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "logprobs"
    assert "logprobs" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,  # nested too deeply for the parser
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',  # lone surrogate
        b'{"model": "syn-fast", "messages": [{"role": "user", "content": "\\udfff"}]}',
    ],
)
def test_hostile_json_is_400_not_500(gateway, tenant, body):
    status, _, payload = _raw(gateway, "/v1/chat/completions", body, tenant[2])
    assert status == 400
    _assert_openai_error(payload, type_="invalid_request_error", code="invalid_json")


def test_an_upstream_refusing_our_credential_is_502_not_the_tenants_401(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="upstream-badkey", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
