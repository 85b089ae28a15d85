"""TEST DOUBLE FOR STRIPE'S SERVERS — not Stripe, and not used outside the tests.

A local HTTP server that speaks exactly the parts of Stripe's API that Vlinders calls, so the
tests drive the official ``stripe`` SDK (``STRIPE_API_BASE`` pointed here) over real HTTP:

- ``POST /v1/customers``
- ``GET /v1/invoices/<id>``, ``GET /v1/invoices/<id>/lines`` (a retried push reads them)
- ``POST /v1/invoices``, ``POST /v1/invoiceitems``, ``POST /v1/invoices/<id>/finalize``,
  ``POST /v1/invoices/<id>/pay`` (``paid_out_of_band``)
- ``POST /v1/checkout/sessions``

Bodies are form-encoded the way Stripe takes them (``metadata[k]=v``, ``line_items[0][…]``),
answers are JSON objects shaped like Stripe's. Like Stripe, it honours ``Idempotency-Key``: a
repeated key replays the first response (and refuses a repeat with different parameters). Every
request is recorded (``calls``) so tests can count what reached "Stripe".

It also produces signed webhook deliveries the way Stripe signs them: header
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, f"{t}.{payload}")>``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

API_KEY = "sk_test_double"
WEBHOOK_SECRET = "whsec_test_double"


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    replayed: bool
    status: int


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=v`` form pairs as nested dicts, dicts of numeric keys as lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: listify(v) for k, v in node.items()}
            if node and all(k.isdigit() for k in node):
                return [node[k] for k in sorted(node, key=int)]
        return node

    return listify(root)  # type: ignore[no-any-return]


class StripeError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class StripeDouble:
    """The state of the fake Stripe account; ``base`` is the URL to give the SDK."""

    base: str = ""
    calls: list[Call] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _replies: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = field(
        default_factory=dict
    )
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what tests look at ---------------------------------------------------------------

    def posts(self, path_prefix: str, *, replayed: bool | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.path.startswith(path_prefix) and (replayed is None or c.replayed == replayed)
        ]

    def invoice_total(self, invoice_id: str) -> int:
        return sum(self.items[i]["amount"] for i in self.invoices[invoice_id]["_items"])

    # --- the API --------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def handle(
        self, method: str, path: str, params: dict[str, Any], key: str | None
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if key is not None and key in self._replies:
                first_path, first_params, status, body = self._replies[key]
                if (first_path, first_params) != (path, params):
                    status, body = (
                        400,
                        _error(
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                            "idempotency_error",
                        ),
                    )
                    self.calls.append(Call(method, path, params, key, False, status))
                    return status, body
                self.calls.append(Call(method, path, params, key, True, status))
                return status, body
            try:
                status, body = 200, self._route(method, path, params)
            except StripeError as exc:
                status, body = exc.status, _error(exc.message, exc.kind)
            if key is not None:
                self._replies[key] = (path, params, status, body)
            self.calls.append(Call(method, path, params, key, False, status))
            return status, body

    def _route(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        parts = path.strip("/").split("/")
        if method == "GET" and parts[:2] == ["v1", "invoices"] and len(parts) == 3:
            return _public(self._invoice(parts[2]))
        if method == "GET" and parts[:2] == ["v1", "invoices"] and parts[3:] == ["lines"]:
            return self._invoice_lines(parts[2])
        if method != "POST":
            raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
        if parts == ["v1", "customers"]:
            return self._customer_create(params)
        if parts == ["v1", "invoices"]:
            return self._invoice_create(params)
        if parts == ["v1", "invoiceitems"]:
            return self._item_create(params)
        if len(parts) == 4 and parts[:2] == ["v1", "invoices"] and parts[3] == "finalize":
            return self._invoice_finalize(parts[2], params)
        if len(parts) == 4 and parts[:2] == ["v1", "invoices"] and parts[3] == "pay":
            return self._invoice_pay(parts[2], params)
        if parts == ["v1", "checkout", "sessions"]:
            return self._session_create(params)
        raise StripeError(404, f"Unrecognized request URL (POST: {path}).")

    def _customer_create(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": self._id("cus"),
            "object": "customer",
            "name": params.get("name"),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "created": int(time.time()),
        }
        self.customers[customer["id"]] = customer
        return customer

    def _invoice_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("customer") not in self.customers:
            raise StripeError(400, f"No such customer: '{params.get('customer')}'")
        invoice = {
            "id": self._id("in"),
            "object": "invoice",
            "customer": params["customer"],
            "currency": params.get("currency", "usd"),
            "collection_method": params.get("collection_method", "charge_automatically"),
            "days_until_due": int(params["days_until_due"]) if "days_until_due" in params else None,
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "status": "draft",
            "total": 0,
            "amount_due": 0,
            "hosted_invoice_url": None,
            "due_date": None,
            "status_transitions": {"paid_at": None, "finalized_at": None},
            "created": int(time.time()),
            "_items": [],
        }
        self.invoices[invoice["id"]] = invoice
        return _public(invoice)

    def _item_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("customer") not in self.customers:
            raise StripeError(400, f"No such customer: '{params.get('customer')}'")
        invoice = self.invoices.get(params.get("invoice", ""))
        if invoice is None:
            raise StripeError(400, f"No such invoice: '{params.get('invoice')}'")
        if invoice["status"] != "draft":
            raise StripeError(400, "You can only add invoice items to draft invoices.")
        try:
            amount = int(params["amount"])
        except (KeyError, ValueError) as exc:
            raise StripeError(400, "Invalid integer: amount") from exc
        item = {
            "id": self._id("ii"),
            "object": "invoiceitem",
            "customer": params["customer"],
            "invoice": invoice["id"],
            "amount": amount,
            "currency": params.get("currency"),
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
        }
        self.items[item["id"]] = item
        invoice["_items"].append(item["id"])
        invoice["total"] = invoice["amount_due"] = self.invoice_total(invoice["id"])
        return item

    def _invoice_finalize(self, invoice_id: str, params: dict[str, Any]) -> dict[str, Any]:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise StripeError(404, f"No such invoice: '{invoice_id}'")
        if invoice["status"] != "draft":
            raise StripeError(400, f"This invoice is already finalized ({invoice['status']}).")
        now = int(time.time())
        invoice["status"] = "open"
        invoice["status_transitions"]["finalized_at"] = now
        invoice["hosted_invoice_url"] = f"{self.base}/pay/{invoice_id}"
        if invoice["days_until_due"] is not None:
            invoice["due_date"] = now + invoice["days_until_due"] * 86400
        return _public(invoice)

    def _invoice(self, invoice_id: str) -> dict[str, Any]:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise StripeError(404, f"No such invoice: '{invoice_id}'")
        return invoice

    def _invoice_lines(self, invoice_id: str) -> dict[str, Any]:
        """The invoice's lines, one per invoice item, carrying the item's metadata (as Stripe's
        invoice line items do); one page (the double's invoices are small)."""
        invoice = self._invoice(invoice_id)
        lines = [
            {
                "id": f"il_{item_id}",
                "object": "line_item",
                "amount": self.items[item_id]["amount"],
                "description": self.items[item_id]["description"],
                "metadata": self.items[item_id]["metadata"],
            }
            for item_id in invoice["_items"]
        ]
        return {
            "object": "list",
            "url": f"/v1/invoices/{invoice_id}/lines",
            "has_more": False,
            "data": lines,
        }

    def forget_idempotency_keys(self) -> None:
        """What Stripe does to a key after 24 hours."""
        with self._lock:
            self._replies.clear()

    def _invoice_pay(self, invoice_id: str, params: dict[str, Any]) -> dict[str, Any]:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise StripeError(404, f"No such invoice: '{invoice_id}'")
        if invoice["status"] == "paid":
            raise StripeError(400, "Invoice is already paid")
        if invoice["status"] != "open":
            raise StripeError(400, f"You cannot pay a {invoice['status']} invoice.")
        if params.get("paid_out_of_band") != "true":
            raise StripeError(400, "This double only knows paid_out_of_band=true.")
        invoice["status"] = "paid"
        invoice["paid_out_of_band"] = True
        invoice["status_transitions"]["paid_at"] = int(time.time())
        return _public(invoice)

    def _session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("mode") != "payment":
            raise StripeError(400, "This double only knows mode=payment.")
        if params.get("customer") not in self.customers:
            raise StripeError(400, f"No such customer: '{params.get('customer')}'")
        for name in ("success_url", "cancel_url"):
            if not params.get(name):
                raise StripeError(400, f"Missing required param: {name}.")
        lines = params.get("line_items") or []
        total = sum(
            int(line["price_data"]["unit_amount"]) * int(line.get("quantity", 1)) for line in lines
        )
        session_id = self._id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "customer": params["customer"],
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "amount_total": total,
            "currency": lines[0]["price_data"]["currency"] if lines else "usd",
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "url": f"{self.base}/checkout/{session_id}",
        }
        self.sessions[session_id] = session
        return session

    # --- what Stripe does on its own: payments, and the webhooks about them ----------------

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        invoice = self.invoices[invoice_id]
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = int(time.time())
        return _public(invoice)

    def complete_session(self, session_id: str) -> dict[str, Any]:
        session = self.sessions[session_id]
        session["status"], session["payment_status"] = "complete", "paid"
        return dict(session)


def _public(invoice: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in invoice.items() if not k.startswith("_")}


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    double: StripeDouble

    def _serve(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._reply(401, _error("Invalid API Key provided.", "invalid_request_error"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        path, _, query = self.path.partition("?")
        params = _nest(parse_qsl(raw or query, keep_blank_values=True))
        status, body = self.double.handle(
            self.command, path, params, self.headers.get("Idempotency-Key")
        )
        self._reply(status, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{time.time_ns()}")
        self.end_headers()
        self.wfile.write(data)

    do_POST = _serve
    do_GET = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StripeServer:
    """Runs a ``StripeDouble`` on 127.0.0.1 at a free port in a thread."""

    def __init__(self) -> None:
        self.double = StripeDouble()
        handler = type("Handler", (_Handler,), {"double": self.double})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.double.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StripeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_event_ids = itertools.count(1)


def signed_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    created: int | None = None,
    event_id: str | None = None,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
) -> tuple[str, str]:
    """``(payload, Stripe-Signature header)`` of one webhook delivery, signed as Stripe does."""
    event = {
        "id": event_id or f"evt_{time.time_ns()}_{next(_event_ids)}",
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": created if created is not None else int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": obj},
    }
    payload = json.dumps(event)
    t = timestamp if timestamp is not None else int(time.time())
    signature = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return payload, f"t={t},v1={signature}"


# --- pytest fixtures: import ``stripe_double_fixture`` / ``eager_tasks_fixture`` into a test
# module to use the fixtures ``stripe_double`` / ``eager_tasks`` ----------------------------------

import pytest  # noqa: E402


@pytest.fixture(name="stripe_double")
def stripe_double_fixture(settings):  # type: ignore[no-untyped-def]
    """The test double running, and the settings pointing the SDK and the webhook at it."""
    with StripeServer() as server:
        settings.STRIPE_SECRET_KEY = API_KEY
        settings.STRIPE_API_BASE = server.double.base
        settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
        yield server.double


@pytest.fixture(name="eager_tasks")
def eager_tasks_fixture():  # type: ignore[no-untyped-def]
    """Celery tasks run in the calling process when queued (``.delay``)."""
    from vlinders.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def free_port_url() -> str:
    """The address of a port nothing listens on: connection refused, as when Stripe is down."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
