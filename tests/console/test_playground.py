"""The playground page and its streaming endpoint (``console.pages.playground``).

The endpoint is tested against ``GatewayDouble``: a TEST DOUBLE standing in for the gateway, used
only in this unit test. It is a small local HTTP server that answers ``POST /v1/chat/completions``
the way the gateway does (docs/gateway.md): server-sent events ending with a usage-only chunk and
``data: [DONE]``, or an error in OpenAI's shape with the gateway's status. It checks nothing: it
records what it was sent, so the tests can assert what the console sent. The real gateway (Ray
Serve) is exercised end to end by the console's Playwright test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from console.playground_relay import cost_display
from tenants import keys
from tenants.models import ApiKey
from tests.factories import CatalogModelFactory, ModelAliasFactory

pytestmark = [pytest.mark.django_db, pytest.mark.redis, pytest.mark.usefixtures("redis_client")]

PAGE = "/orgs/acme/playground/"
CHAT = "/orgs/acme/playground/chat/"
SHUT = {"viewer": 403, "outsider": 404, "anonymous": 302}


# --- the test double standing in for the gateway ------------------------------------------------


class GatewayDouble:
    """TEST DOUBLE for the gateway's ``/v1/chat/completions`` (this unit test only; see the
    module docstring). ``refuse(status, body, headers)`` makes it answer an error; by default it
    streams ``pieces`` (waiting for ``release`` after the first one when ``hold`` is set), then
    the usage chunk and ``[DONE]``; ``stream: false`` gets a whole completion."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.pieces = ["Hel", "lo!"]
        self.usage = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        self.hold = False
        self.held_in_vain = False
        self.release = threading.Event()
        self.refusal: tuple[int, bytes, dict[str, str]] | None = None
        self.tail: list[bytes] | None = None  # replaces the usage chunk and [DONE] when set
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if double.refusal is not None:
                    status, payload, headers = double.refusal
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if not body.get("stream"):
                    answer = json.dumps(
                        {
                            "id": "req_whole",
                            "object": "chat.completion",
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": "Paris."},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": double.usage,
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for number, piece in enumerate(double.pieces):
                    chunk = {
                        "id": "req_double",
                        "object": "chat.completion.chunk",
                        "model": body["model"],
                        "choices": [{"index": 0, "delta": {"content": piece}}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if number == 0 and double.hold and not double.release.wait(10):
                        double.held_in_vain = True  # nobody saw the first piece in time
                if double.tail is not None:
                    for part in double.tail:
                        self.wfile.write(part)
                    return
                usage = {
                    "id": "req_double",
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": [],
                    "usage": double.usage,
                }
                self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def refuse(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        self.refusal = (status, json.dumps(body).encode(), headers or {})


@pytest.fixture
def gateway(settings) -> Iterator[GatewayDouble]:  # type: ignore[no-untyped-def]
    double = GatewayDouble()
    double.thread.start()
    settings.VLINDERS_GATEWAY_HOST = "127.0.0.1"
    settings.VLINDERS_GATEWAY_PORT = double.port
    yield double
    double.release.set()
    double.server.shutdown()
    double.server.server_close()


@pytest.fixture
def chat_model(org):  # type: ignore[no-untyped-def]
    return CatalogModelFactory(
        name="syn-chat",
        context_length=2048,
        price_input_per_mtok=Decimal("0.50"),
        price_output_per_mtok=Decimal("1.50"),
    )


@pytest.fixture
def committing(django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """Run each call's commit callbacks (the snapshot publish, storing the secret for reuse)."""

    def run(call: Callable[[], Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return call()

    return run


def _payload(**extra: Any) -> dict[str, Any]:
    return {
        "model": "syn-chat",
        "temperature": 0.2,
        "max_tokens": 64,
        "message": "Say hello",
        "history": [],
        **extra,
    }


def _events(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each server-sent event."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((name, "\n".join(data)))
    return out


def _stream(
    user: Any, payload: dict[str, Any], *, on_first: Callable[[bytes], None] | None = None
) -> tuple[Any, bytes]:
    """POST the chat endpoint as the browser does (JSON) through Django's async client, in one
    event loop (the app runs under ASGI), and read the whole streamed body."""

    async def go() -> tuple[Any, bytes]:
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.post(CHAT, payload, content_type="application/json")
        if not response.streaming:
            return response, response.content
        chunks: list[bytes] = []
        async for chunk in response.streaming_content:
            if not chunks and on_first is not None:
                on_first(chunk)
            chunks.append(chunk)
        return response, b"".join(chunks)

    return async_to_sync(go)()


# --- the role matrix ----------------------------------------------------------------------------


def test_the_page_is_for_members_and_up(assert_matrix, chat_model):
    allowed = {"owner": 200, "admin": 200, "member": 200, "staff": 200}
    assert_matrix(PAGE, allowed | SHUT)


def test_the_pages_form_is_for_members_and_up(assert_matrix, chat_model):
    # An empty message: members and up get the form back with its error, never the gateway.
    invalid = {"owner": 400, "admin": 400, "member": 400, "staff": 400}
    assert_matrix(PAGE, invalid | SHUT, method="post", data={"model": "syn-chat"})


def test_the_chat_endpoint_takes_posts_from_members_and_up(assert_matrix, chat_model):
    get = {"owner": 405, "admin": 405, "member": 405, "staff": 405}
    assert_matrix(CHAT, get | SHUT)
    invalid = {"owner": 400, "admin": 400, "member": 400, "staff": 400}
    assert_matrix(CHAT, invalid | SHUT, method="post", data={"model": "syn-chat"})


def test_a_viewer_gets_no_credential_and_the_gateway_no_request(role_client, gateway, chat_model):
    response = role_client("viewer").post(CHAT, _payload(), content_type="application/json")
    assert response.status_code == 403
    assert not ApiKey.objects.exists()
    assert gateway.requests == []


def test_the_chat_endpoint_needs_the_csrf_token(member, gateway, chat_model):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    response = client.post(CHAT, _payload(), content_type="application/json")
    assert response.status_code == 403
    assert gateway.requests == []


# --- the page -----------------------------------------------------------------------------------


def test_the_page_offers_the_organisations_chat_models_with_labelled_controls(
    role_client, org, chat_model
):
    ModelAliasFactory(name="chat-latest", target=chat_model)
    CatalogModelFactory(name="embedder", engine_kind="vllm", engine_args={"task": "embed"})
    private = CatalogModelFactory(name="someone-elses", visibility="restricted")
    private.organizations.set([])
    response = role_client("member").get(PAGE)
    page = response.content.decode()
    assert response.status_code == 200
    for control in ("id_model", "id_temperature", "id_max_tokens", "id_system", "id_message"):
        assert f'for="{control}"' in page
    assert '<option value="syn-chat"' in page
    assert '<option value="chat-latest"' in page
    assert "embedder" not in page.split('id="id_model"')[1].split("</select>")[0]
    assert "someone-elses" not in page
    assert "$0.5 per million input tokens, $1.5 per million output tokens" in page
    assert 'data-stream-url="/orgs/acme/playground/chat/"' in page
    assert "csrfmiddlewaretoken" in page
    assert "console/playground.js" in page
    assert ">Send</button>" in page
    assert 'id="playground-conversation"' in page
    assert 'id="playground-usage"' in page
    assert "<script>" not in page  # the models' JSON is a json_script block, not code
    assert "vlk_" not in page
    # Looking at the page mints nothing.
    assert not ApiKey.objects.exists()


def test_the_page_says_when_no_model_is_available(role_client):
    response = role_client("member").get(PAGE)
    assert response.status_code == 200
    assert "No model is available" in response.content.decode()


def test_without_javascript_the_form_gets_the_whole_reply(
    role_client, gateway, chat_model, committing
):
    history = json.dumps(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi!"}]
    )
    response = committing(
        lambda: role_client("member").post(
            PAGE,
            {
                "model": "syn-chat",
                "temperature": "0.5",
                "max_tokens": "32",
                "message": "Capital of France?",
                "history": history,
            },
        )
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Paris." in page
    assert "12 prompt + 2 completion tokens · $0.000009" in page
    sent = gateway.requests[0]["body"]
    assert sent["stream"] is False
    assert sent["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    # The conversation so far, with the reply, rides in the hidden field for the next message.
    hidden = page.split('id="playground-history"')[1].split(">")[0]
    assert "Capital of France?" in hidden
    assert "Paris." in hidden
    assert "vlk_" not in page


def test_without_javascript_a_refusal_is_shown_and_the_message_kept(
    role_client, gateway, chat_model
):
    gateway.refuse(
        429,
        {
            "error": {
                "message": "You exceeded your requests per minute. Retry after 7 s.",
                "type": "rate_limit_exceeded",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
    )
    response = role_client("member").post(
        PAGE, {"model": "syn-chat", "temperature": "1", "max_tokens": "8", "message": "Again"}
    )
    page = response.content.decode()
    assert response.status_code == 429
    assert "You exceeded your requests per minute" in page
    assert ">\nAgain</textarea>" in page


def test_clearing_the_conversation_without_javascript(role_client, chat_model):
    response = role_client("member").post(PAGE, {"clear": "1", "history": "[]"})
    assert response.status_code == 302
    assert response["Location"] == PAGE


# --- the streaming endpoint ---------------------------------------------------------------------


def test_a_reply_streams_as_it_arrives_then_its_tokens_and_cost(
    member, gateway, chat_model, committing
):
    gateway.hold = True
    seen_first: list[bytes] = []

    def first(chunk: bytes) -> None:
        # The first token reached the browser while the gateway still holds the rest.
        seen_first.append(chunk)
        assert b"Hel" in chunk
        assert b"lo!" not in chunk
        gateway.release.set()

    response, body = committing(
        lambda: _stream(
            member,
            _payload(system="Be brief.", history=[{"role": "user", "content": "Hi"}]),
            on_first=first,
        )
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    assert seen_first
    assert not gateway.held_in_vain
    events = _events(body)
    deltas = [
        json.loads(data)["choices"][0]["delta"]["content"]
        for name, data in events
        if name == "message" and data != "[DONE]" and json.loads(data).get("choices")
    ]
    assert "".join(deltas) == "Hello!"
    assert events[-1] == ("message", "[DONE]")
    name, data = events[-2]
    assert name == "vlinders.cost"
    cost = json.loads(data)
    # 12 x 0.50 + 2 x 1.50 per million tokens, exactly.
    assert cost == {
        "request_id": "req_double",
        "model": "syn-chat",
        "prompt_tokens": 12,
        "completion_tokens": 2,
        "total_tokens": 14,
        "cost": f"{Decimal('0.000009'):f}",
        "cost_display": "$0.000009",
    }
    # What the console sent the gateway: the member's console key, streaming with usage.
    sent = gateway.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    key = ApiKey.objects.get()
    assert key.source == ApiKey.Source.CONSOLE
    assert key.created_by == member
    bearer = sent["headers"]["Authorization"].removeprefix("Bearer ")
    assert keys.matches(bearer, key.secret_hash)
    assert bearer.encode() not in body
    assert sent["body"] == {
        "model": "syn-chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Say hello"},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_messages_reuse_the_credential(member, gateway, chat_model, committing):
    committing(lambda: _stream(member, _payload()))
    committing(lambda: _stream(member, _payload(message="And again")))
    first, second = (r["headers"]["Authorization"] for r in gateway.requests)
    assert first == second
    assert ApiKey.objects.count() == 1


@pytest.mark.parametrize(
    ("status", "code", "headers"),
    [
        (401, "expired_api_key", {}),
        (403, "model_not_allowed", {}),
        (404, "model_not_found", {}),
        (429, "rate_limit_exceeded", {"Retry-After": "7"}),
        (503, "model_overloaded", {"Retry-After": "1"}),
    ],
)
def test_the_gateways_refusals_reach_the_browser_as_they_are(
    member, gateway, chat_model, status, code, headers
):
    error = {"error": {"message": f"refused: {code}", "type": "x", "param": None, "code": code}}
    gateway.refuse(status, error, headers)
    response, body = _stream(member, _payload())
    assert response.status_code == status
    assert json.loads(body) == error
    for name, value in headers.items():
        assert response[name] == value


def test_a_credential_the_gateway_refuses_is_renewed_for_the_next_message(
    member, gateway, chat_model, committing
):
    committing(lambda: _stream(member, _payload()))
    gateway.refuse(401, {"error": {"message": "Invalid API key.", "code": "invalid_api_key"}})
    response, _ = committing(lambda: _stream(member, _payload()))
    assert response.status_code == 401
    gateway.refusal = None
    response, _ = committing(lambda: _stream(member, _payload()))
    assert response.status_code == 200
    first, refused, renewed = (r["headers"]["Authorization"] for r in gateway.requests)
    assert first == refused != renewed
    assert ApiKey.objects.count() == 1  # renewed in place
    assert keys.matches(renewed.removeprefix("Bearer "), ApiKey.objects.get().secret_hash)


def test_a_gateway_that_answers_something_else_is_reported_in_openai_shape(
    member, gateway, chat_model
):
    gateway.refusal = (500, b"<html>oops</html>", {})
    response, body = _stream(member, _payload())
    assert response.status_code == 500
    assert json.loads(body)["error"]["code"] == "gateway_error"


def test_a_gateway_that_is_down_is_a_clear_502(member, gateway, chat_model, settings):
    gateway.server.shutdown()
    gateway.server.server_close()
    response, body = _stream(member, _payload())
    assert response.status_code == 502
    error = json.loads(body)["error"]
    assert error["code"] == "gateway_unreachable"
    assert "gateway cannot be reached" in error["message"]


def test_an_error_in_the_middle_of_a_stream_is_passed_on(member, gateway, chat_model):
    timeout = {"error": {"message": "The request did not finish", "code": "timeout"}}
    gateway.tail = [f"data: {json.dumps(timeout)}\n\n".encode()]
    response, body = _stream(member, _payload())
    events = _events(body)
    assert response.status_code == 200
    assert json.loads(events[-1][1]) == timeout
    assert all(name != "vlinders.cost" for name, _ in events)


def test_a_stream_cut_short_says_so(member, gateway, chat_model):
    gateway.tail = []
    response, body = _stream(member, _payload())
    events = _events(body)
    assert response.status_code == 200
    assert json.loads(events[-1][1])["error"]["code"] == "incomplete"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": 4096}, "max_tokens"),  # over the model's context length (2048)
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "NaN"}, "temperature"),
        ({"model": "nope"}, "model"),
        ({"message": ""}, "message"),
        ({"message": "x" * 32_001}, "message"),
        ({"history": [{"role": "system", "content": "x"}]}, "history"),
        ({"history": "not a list"}, "history"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(member, gateway, chat_model, change, param):
    response, body = _stream(member, _payload(**change))
    assert response.status_code == 400
    assert json.loads(body)["error"]["param"] == param
    assert gateway.requests == []


def test_a_body_that_is_not_a_json_object_is_a_400(role_client, gateway, chat_model):
    client = role_client("member")
    for raw in ("{", "[1]", '"text"'):
        response = client.post(CHAT, raw, content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"


def test_cost_display():
    assert cost_display(Decimal(0)) == "$0.00"
    assert cost_display(Decimal("0.0000004")) == "< $0.000001"
    assert cost_display(Decimal("0.0123456789")) == "$0.012346"
