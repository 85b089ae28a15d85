"""/metrics sums every replica of the node, whichever replica answers the scrape."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ray_fixtures import METRICS_TOKEN

pytestmark = [pytest.mark.django_db, pytest.mark.ray]


@pytest.mark.parametrize("token", [None, "wrong", "Bearer"])
def test_metrics_are_for_the_scraper_only(gateway, token):
    """/metrics names every tenant: without the scraper's token it does not exist."""
    status, body = gateway.get("/metrics", token=token)
    assert status == 404
    assert "vlinders_" not in body


def openai_client(gateway, secret):
    import openai

    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)


def _scrape(gateway):
    status, text = gateway.get("/metrics", token=METRICS_TOKEN)
    assert status == 200
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_counts_add_up_across_replicas(gateway, client, tenant):
    before = gateway.metric("vlinders_requests_total", model="syn-fast", status="200")
    tokens_before = gateway.metric(
        "vlinders_tokens_total", model="syn-fast", direction="completion"
    )
    for _ in range(20):  # spread over both gateway replicas
        client.chat.completions.create(
            model="syn-fast", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    # Several scrapes, each answered by whichever replica HAProxy picks, all see all 20.
    for _ in range(6):
        after = gateway.metric("vlinders_requests_total", model="syn-fast", status="200")
        assert after - before == 20
    tokens = gateway.metric("vlinders_tokens_total", model="syn-fast", direction="completion")
    assert tokens - tokens_before == 40


def test_no_label_grows_with_the_number_of_tenants(gateway, make_tenant):
    """Without VLINDERS_METRICS_TENANT_LABELS no series names an organisation: three tenants'
    requests add to the same series."""
    for _ in range(3):
        _, _, secret = make_tenant()
        openai_client(gateway, secret).chat.completions.create(
            model="syn-fast", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    for family in _scrape(gateway).values():
        if family.name.startswith("vlinders_"):
            for sample in family.samples:
                assert "org" not in sample.labels, sample


def test_histograms_and_error_counters_are_exposed(gateway, client):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    list(
        client.chat.completions.create(  # a stream records time to first token
            model="syn-fast", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    families = _scrape(gateway)
    for name in (
        "vlinders_requests",
        "vlinders_errors",
        "vlinders_request_latency_seconds",
        "vlinders_time_to_first_token_seconds",
        "vlinders_tokens",
        "vlinders_requests_in_flight",
    ):
        assert name in families, name
    # An unknown name is not a label value (clients cannot mint series): it counts under "-".
    assert gateway.metric("vlinders_errors_total", model="-", code="model_not_found") >= 1


# vLLM's own metrics, as vLLM 0.32 names them, with the served model's name as ``model_name``.
VLLM_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:generation_tokens",
)


def test_vllm_records_its_own_metrics_into_the_gateway_page(gateway, client):
    """The vLLM engine runs in its model server's replica process, which records into the
    node's multiprocess files like the gateway: the gateway's /metrics serves vLLM's metrics."""
    before = gateway.metric("vllm:generation_tokens_total", model_name="smollm2")
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
    )
    families = _scrape(gateway)
    for name in VLLM_METRICS:
        assert name in families, name
        assert any(s.labels.get("model_name") == "smollm2" for s in families[name].samples), name
    assert gateway.metric("vllm:generation_tokens_total", model_name="smollm2") > before
