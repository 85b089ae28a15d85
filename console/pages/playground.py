"""The playground: chat with the organisation's models, through the gateway, as any client would.

The browser never holds a key ("no inline secrets in the pages"). It posts the conversation to
this console (same origin, CSRF-protected, signed in); the console asks
``tenants.console_credentials`` for the member's short-lived credential (a console-marked API key,
reused while it lasts) and calls the gateway's ``/v1/chat/completions`` with it, over httpx, from
the server. So the request is authenticated, limited and metered by the gateway like any other,
to the organisation, under a key whose ``source`` says it came from the console.

- ``POST playground/chat/`` (``org-playground-chat``), used by ``playground.js``: JSON (or form)
  in, the gateway's server-sent events out, relayed as they arrive (``stream: true`` with
  ``stream_options.include_usage``). Before ``data: [DONE]`` the console adds one event of its
  own, ``event: vlinders.cost``, with the reply's tokens and its cost, computed here in Decimal
  from the usage chunk and the catalog's prices with the gateway's own formula
  (``inference.serving.pricing.cost``); the gateway's usage chunk carries no cost. A gateway that
  refuses (401, 403, 404, 429, 503, …) is answered with its status and its OpenAI-shaped error
  (``Retry-After`` kept); a gateway that cannot be reached is a 502 ``gateway_unreachable``.
- ``POST playground/`` without JavaScript: the same exchange without streaming, the page drawn
  again with the reply, its tokens and cost. The conversation so far travels in a hidden field.

The relay to the gateway (the httpx client, its timeouts, the server-sent events, the cost event
and the mapping of the gateway's errors) is ``console.playground_relay``; this module holds the
views, their form and what the page draws.

Both views are async (the app runs under ASGI, and a reply can take minutes: no thread waits on
the gateway). The scoping and every database read run first, synchronously, inside the one
``org_page`` mechanism (viewers 403, outsiders 404); only then does the async part talk to the
gateway, holding nothing but the prepared request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django import forms
from django.core.exceptions import ValidationError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.urls import path

from console.playground_relay import (
    GatewayCall,
    Reply,
    complete,
    cost_display,
    open_stream,
    openai_error,
    reply_cost,
)
from console.scoping import OrgContext, org_page
from inference.selectors import endpoints_for_organization
from tenants.catalog import AvailableModel, available_models_for_organization
from tenants.console_credentials import console_credential_issue
from tenants.roles import USE

logger = logging.getLogger(__name__)

# Bounds on what one exchange may carry (the gateway refuses bodies over 1 MiB anyway).
MAX_MESSAGE_CHARS = 32_000
MAX_HISTORY_MESSAGES = 100
MAX_CONVERSATION_CHARS = 200_000
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.7


# --- the form: one for the page (no JavaScript) and the chat endpoint (JSON) -------------------


def chat_models(organization: Any) -> list[AvailableModel]:
    """The models and aliases the organisation may use (the selector the models page and the
    management API use), less those the catalog knows serve no chat (embedding models)."""
    endpoints = endpoints_for_organization(organization)
    return [
        model
        for model in available_models_for_organization(organization)
        if endpoints.get(model.name) is None or "chat.completions" in (endpoints[model.name] or ())
    ]


class ChatForm(forms.Form):
    model = forms.ChoiceField(label="Model")
    temperature = forms.FloatField(
        label="Temperature",
        min_value=0,
        max_value=2,
        initial=DEFAULT_TEMPERATURE,
        help_text="0 to 2; lower is more deterministic.",
        widget=forms.NumberInput(attrs={"step": "0.1"}),
    )
    max_tokens = forms.IntegerField(
        label="Max tokens",
        min_value=1,
        initial=DEFAULT_MAX_TOKENS,
        help_text="The longest reply, in tokens.",
    )
    system = forms.CharField(
        label="System prompt (optional)",
        required=False,
        max_length=MAX_MESSAGE_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    message = forms.CharField(
        label="Message",
        max_length=MAX_MESSAGE_CHARS,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Ctrl+Enter (⌘+Enter) sends.",
    )
    history = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, models: list[AvailableModel], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models = {model.name: model for model in models}
        choice = self.fields["model"]
        assert isinstance(choice, forms.ChoiceField)
        choice.choices = [
            (m.name, m.name if m.target is None else f"{m.name} (→ {m.target})") for m in models
        ]

    def clean_history(self) -> list[dict[str, str]]:
        raw = self.cleaned_data.get("history") or ""
        if not raw.strip():
            return []
        try:
            turns = json.loads(raw)
        except ValueError:
            raise ValidationError("The conversation could not be read.") from None
        if not isinstance(turns, list) or len(turns) > MAX_HISTORY_MESSAGES:
            raise ValidationError(
                f"The conversation must be a list of at most {MAX_HISTORY_MESSAGES} messages; "
                "clear it to start again."
            )
        history: list[dict[str, str]] = []
        for turn in turns:
            if (
                not isinstance(turn, dict)
                or turn.get("role") not in ("user", "assistant")
                or not isinstance(turn.get("content"), str)
                or len(turn["content"]) > MAX_MESSAGE_CHARS
            ):
                raise ValidationError(
                    "Each message of the conversation needs a role (user or assistant) and "
                    f"a text of at most {MAX_MESSAGE_CHARS} characters."
                )
            history.append({"role": turn["role"], "content": turn["content"]})
        return history

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        model = self.models.get(data.get("model") or "")
        max_tokens = data.get("max_tokens")
        if model is not None and max_tokens is not None and max_tokens > model.context_length:
            self.add_error(
                "max_tokens",
                f"At most {model.context_length} (the context length of {model.name}).",
            )
        size = sum(len(turn["content"]) for turn in data.get("history") or [])
        size += len(data.get("message") or "") + len(data.get("system") or "")
        if size > MAX_CONVERSATION_CHARS:
            raise ValidationError(
                f"The conversation is over {MAX_CONVERSATION_CHARS} characters; clear it to "
                "start again."
            )
        return data

    def chosen_model(self) -> AvailableModel:
        return self.models[self.cleaned_data["model"]]

    def messages(self) -> list[dict[str, str]]:
        """What the gateway is sent: the system prompt, the conversation and the new message."""
        data = self.cleaned_data
        system = [{"role": "system", "content": data["system"]}] if data.get("system") else []
        return [*system, *data["history"], {"role": "user", "content": data["message"]}]


def _form_data_from_json(body: bytes) -> dict[str, Any] | None:
    """The form's fields from a JSON body (``history`` as a list), or ``None`` if it is not a
    JSON object."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    data: dict[str, Any] = {}
    for name in ("model", "temperature", "max_tokens", "system", "message"):
        value = payload.get(name)
        if value is not None and not isinstance(value, bool):
            data[name] = value if isinstance(value, str) else json.dumps(value)
    if "history" in payload:
        data["history"] = json.dumps(payload["history"])
    return data


def _form_error(form: ChatForm) -> dict[str, Any]:
    """The first problem of an invalid form, in OpenAI's error shape (``param``: the field)."""
    errors = form.errors.get_json_data()
    name = next(iter(errors))
    message = errors[name][0]["message"]
    param = None if name == "__all__" else name
    if param is not None:
        message = f"{form.fields[param].label or param}: {message}"
    return openai_error(message, param=param, code="invalid_value")


# --- the exchange: prepared synchronously (scoping, database), run asynchronously (gateway) ----


@dataclass(frozen=True)
class Exchange(GatewayCall):
    """One message on its way to the gateway (the relay's ``GatewayCall``), with what the page
    needs to draw itself again: no ORM."""

    ctx: OrgContext
    form: ChatForm


class _Prepared(HttpResponse):
    """What the synchronous, scoped half of a view hands its async half: never sent."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__(status=204)
        self.exchange = exchange


def _prepare(ctx: OrgContext, form: ChatForm, *, stream: bool) -> Exchange:
    """Issue (or reuse) the member's credential and build the gateway's request body. Raises
    ``PermissionDenied`` (role too weak), ``ValidationError`` or ``redis.RedisError``."""
    credential = console_credential_issue(organization=ctx.organization, user=ctx.user)
    data = form.cleaned_data
    body: dict[str, Any] = {
        "model": data["model"],
        "messages": form.messages(),
        "temperature": data["temperature"],
        "max_tokens": data["max_tokens"],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return Exchange(
        ctx=ctx,
        form=form,
        model=form.chosen_model(),
        body=body,
        secret=credential.secret,
        key_id=str(credential.api_key.pk),
    )


def _credential_or_error(
    ctx: OrgContext, form: ChatForm, *, stream: bool
) -> Exchange | tuple[int, dict[str, Any]]:
    try:
        return _prepare(ctx, form, stream=stream)
    except ValidationError as error:
        return 400, openai_error(" ".join(error.messages), code="invalid_value")
    except redis.RedisError:
        logger.exception("playground: the console credential could not be issued")
        return 503, openai_error(
            "The console cannot issue its credential right now (Redis is unreachable); retry "
            "shortly.",
            type_="server_error",
            code="credential_unavailable",
        )


# --- the chat endpoint (JavaScript) -------------------------------------------------------------


@org_page(read=USE, write=USE)
def _chat_scoped(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if request.content_type == "application/json":
        data = _form_data_from_json(request.body)
        if data is None:
            return JsonResponse(
                openai_error("The body must be a JSON object.", code="invalid_json"), status=400
            )
    else:
        data = request.POST.dict()
    form = ChatForm(data, models=chat_models(ctx.organization))
    if not form.is_valid():
        return JsonResponse(_form_error(form), status=400)
    prepared = _credential_or_error(ctx, form, stream=True)
    if isinstance(prepared, tuple):
        return JsonResponse(prepared[1], status=prepared[0])
    return _Prepared(prepared)


async def chat(request: HttpRequest, slug: str) -> HttpResponseBase:
    """Relay one reply of the gateway as server-sent events (see the module docstring)."""
    response = await sync_to_async(_chat_scoped)(request, slug=slug)
    if not isinstance(response, _Prepared):
        return response
    return await open_stream(response.exchange)


# --- the page (and its form without JavaScript) -----------------------------------------------


def model_summary(model: AvailableModel) -> str:
    """Prices and context length of a model, as the page says them under the select."""
    price_in = f"{model.price_input_per_mtok.normalize():f}"
    price_out = f"{model.price_output_per_mtok.normalize():f}"
    return (
        f"${price_in} per million input tokens, ${price_out} per million output tokens; "
        f"{model.context_length:,} tokens of context."
    )


def _page_context(
    ctx: OrgContext, form: ChatForm, models: list[AvailableModel], **extra: Any
) -> dict[str, Any]:
    chosen = form["model"].value()
    selected = form.models.get(str(chosen)) if chosen else None
    selected = selected or (models[0] if models else None)
    return {
        "section": "playground",
        "form": form,
        "models": models,
        "models_json": [
            {"name": m.name, "max_tokens": m.context_length, "summary": model_summary(m)}
            for m in models
        ],
        "model_summary": model_summary(selected) if selected else "",
        "conversation": [],
        "history_json": "[]",
        **extra,
    }


@org_page(read=USE, write=USE)
def _page_scoped(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    models = chat_models(ctx.organization)
    if request.method != "POST":
        form = ChatForm(models=models, initial={"model": models[0].name if models else None})
        return render(request, "console/playground/page.html", _page_context(ctx, form, models))
    if "clear" in request.POST:
        return redirect("console:org-playground", ctx.organization.slug)
    form = ChatForm(request.POST, models=models)
    if not form.is_valid():
        return render(
            request,
            "console/playground/page.html",
            _page_context(ctx, form, models, **_conversation_of(form)),
            status=400,
        )
    prepared = _credential_or_error(ctx, form, stream=False)
    if isinstance(prepared, tuple):
        status, error = prepared
        return render(
            request,
            "console/playground/page.html",
            _page_context(
                ctx, form, models, error=error["error"]["message"], **_conversation_of(form)
            ),
            status=status,
        )
    return _Prepared(prepared)


def _conversation_of(form: ChatForm) -> dict[str, Any]:
    """The conversation a form carried (for drawing the page again after a bad message)."""
    history = form.cleaned_data.get("history") if hasattr(form, "cleaned_data") else None
    history = history if isinstance(history, list) else []
    return {"conversation": history, "history_json": json.dumps(history)}


async def playground(request: HttpRequest, slug: str) -> HttpResponseBase:
    """The page; its form's POST (without JavaScript) asks the gateway without streaming."""
    response = await sync_to_async(_page_scoped)(request, slug=slug)
    if not isinstance(response, _Prepared):
        return response
    reply = await complete(response.exchange)
    return await sync_to_async(_render_reply)(request, response.exchange, reply)


def _render_reply(request: HttpRequest, exchange: Exchange, reply: Reply) -> HttpResponse:
    form = exchange.form
    data = form.cleaned_data
    conversation = [*data["history"], {"role": "user", "content": data["message"]}]
    extra: dict[str, Any] = {}
    if reply.status == 200:
        conversation.append({"role": "assistant", "content": reply.content})
        prompt, completion, amount = reply_cost(exchange.model, reply.usage or {})
        extra["last_usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost": amount,
            "cost_display": cost_display(amount),
        }
        history = conversation
    else:
        extra["error"] = reply.error
        history = data["history"]
    # A new form: the same settings, the message box empty (or kept, to retry after an error).
    fresh = ChatForm(
        models=list(form.models.values()),
        initial={
            "model": data["model"],
            "temperature": data["temperature"],
            "max_tokens": data["max_tokens"],
            "system": data.get("system") or "",
            "message": "" if reply.status == 200 else data["message"],
        },
    )
    return render(
        request,
        "console/playground/page.html",
        _page_context(
            exchange.ctx,
            fresh,
            list(form.models.values()),
            conversation=conversation,
            history_json=json.dumps(history),
            **extra,
        ),
        status=reply.status,
    )


urlpatterns = [
    path("playground/", playground, name="org-playground"),
    path("playground/chat/", chat, name="org-playground-chat"),
]
