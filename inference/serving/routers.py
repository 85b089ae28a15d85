"""Request routers for model deployments (``request_router`` in the catalog and the spec).

A model with several replicas is routed by Ray Serve's request router, which the gateway's
handle runs; the model server deployment's ``request_router_config`` chooses it, set by
``build_model`` (``app.py``) from the model's args (:func:`router_options`):

- ``default``: nothing is set, so Serve's own router runs (power of two choices: two random
  replicas, the one with the shorter queue);
- ``prefix_affinity``: :class:`PrefixAffinityRouter`, Ray's ``PrefixCacheAffinityRouter`` made to
  read our calls. While the replicas' queues are balanced, a request goes to the replica that
  already served the longest prefix of its prompt, so that replica's engine (vLLM's prefix
  cache) reuses the prompt's KV blocks instead of recomputing them; a prompt that matches less
  than 10% of anything seen goes to the replica that has seen the least text.

Ray's router finds the prompt in a request object with a ``messages`` or ``prompt`` attribute
(Ray LLM's own request types). The gateway calls ``ModelServer.complete(endpoint, body,
priority)`` and ``.stream(...)`` with ``body`` an OpenAI request dict, so Ray's router would
raise on every call; :class:`PrefixAffinityRouter` gives it the text of that dict instead
(:func:`prompt_text`). Everything else is Ray's: the prefix tree actor (one per deployment),
the matching, the fallback to the smallest tenant, the power of two choices when there is no
prompt, and the tree's upkeep when replicas come and go.

Two of Ray's per-request steps call the tree actor with a blocking ``ray.get``. In Serve's
throughput-optimised mode (which Vlinders runs, DESIGN.md) a handle's router runs on the
calling replica's own event loop, so a blocking call would stall every request of that gateway
replica for an actor round trip, twice per request. Here the match is awaited and the insert
is sent without waiting (an actor runs one caller's calls in order, so the next match of this
router still sees it). The prefix tree actor is also created with ``num_cpus=0``: Ray's default
actor needs a free CPU to be placed, and on a node whose CPUs are all held by model replicas it
would never start, and every request would wait for it.

Serve refuses a custom router on an application's ingress deployment under its HAProxy ingress,
so a model server with one is its application's second deployment, behind
:class:`RouterIngress` (:func:`with_router_ingress`).

Data plane: no Django here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray import serve

# The public name is ``ray.serve.llm.request_router.PrefixCacheAffinityRouter``, a subclass of
# this one with no body; importing ``ray.serve.llm`` loads Ray LLM's whole config stack, which
# needs ``ray[llm]``'s dependencies (pyarrow, ...), not installed here. Same class, same logic.
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTreeActor
from ray.serve import Application
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.replica_result import ReplicaResult
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

from inference.serving.spec import ROUTER_INGRESS_DEPLOYMENT

# The router class of each ``request_router`` other than Serve's default.
ROUTER_CLASSES = {"prefix_affinity": "inference.serving.routers.PrefixAffinityRouter"}
# The stub ingress deployment of a model application whose server has its own router.
INGRESS_DEPLOYMENT = ROUTER_INGRESS_DEPLOYMENT

# The name Ray gives a deployment's prefix tree actor (``PrefixCacheAffinityRouter``): kept, so
# an operator finds it where Ray's documentation says.
TREE_ACTOR_NAME = "LlmPrefixTreeActor"


def request_body(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The OpenAI request dict of a model server call (``complete(endpoint, body, priority)``
    or ``stream(...)``, positional or by keyword), or ``None`` for any other call."""
    body = kwargs.get("body")
    if isinstance(body, dict):
        return body
    for arg in args:
        if isinstance(arg, dict):
            return arg
    return None


def _content_text(content: Any) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def prompt_text(body: Mapping[str, Any] | None) -> str:
    """The text a request's prefix is matched on: its chat messages' text in order (each
    prefixed by its role, so a system prompt and a user turn with the same words differ, as
    they do for the engine), or its completion prompt; token-id prompts as their ids. Empty
    when the request has neither (embeddings: nothing to share)."""
    if not body:
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"<|{message.get('role', '')}|>{_content_text(message.get('content'))}"
            for message in messages
            if isinstance(message, dict)
        )
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        # One prompt (a list of strings is a batch; a list of ints one tokenised prompt; a list
        # of lists a batch of those): the batch's items in order, as text.
        return "".join(
            item if isinstance(item, str) else f"{item}," if isinstance(item, int) else ""
            for item in _flatten(prompt)
        )
    return ""


def _flatten(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, list):
            out.extend(item)
        else:
            out.append(item)
    return out


class PrefixAffinityRouter(PrefixCacheAffinityRouter):
    """Ray's ``PrefixCacheAffinityRouter`` for Vlinders' model servers (the module docstring
    says what changes and why). ``request_router_kwargs`` are Ray's (``imbalanced_threshold``,
    ``match_rate_threshold``, eviction); none is needed."""

    def initialize_state(  # type: ignore[override]
        self, tree_actor: Any = None, **kwargs: Any
    ) -> None:
        if tree_actor is None:
            tree_actor = self._tree_actor_of_deployment()
        super().initialize_state(tree_actor=tree_actor, **kwargs)

    def _tree_actor_of_deployment(self) -> Any:
        """Ray's per-deployment prefix tree actor (its name and namespace), placed with no CPU,
        and registered with Serve's controller so ``serve.shutdown`` removes it (what Ray's
        ``initialize_state`` does when given no actor)."""
        deployment = self._deployment_id
        namespace = "::".join(
            [SERVE_NAMESPACE]
            + ([deployment.app_name] if deployment and deployment.app_name else [])
            + ([deployment.name] if deployment and deployment.name else [])
        )
        actor = PrefixTreeActor.options(  # type: ignore[attr-defined]
            name=TREE_ACTOR_NAME,
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
        ).remote()
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.get(controller._register_shutdown_cleanup_actor.remote(actor))
        return actor

    def _extract_text_from_request(self, pending_request: PendingRequest) -> str:
        """Our calls' prompt text (Ray's reads Ray LLM's request objects)."""
        return prompt_text(request_body(pending_request.args, pending_request.kwargs))

    async def _prefix_match_best_replicas(  # type: ignore[override]
        self,
        pending_request: PendingRequest | None,
        candidate_replicas: list[RunningReplica],
    ) -> list[list[RunningReplica]]:
        """Ray's choice (``PrefixCacheAffinityRouter._prefix_match_best_replicas``), step for
        step, with the tree actor's answers awaited instead of fetched with ``ray.get``. An
        empty list means no preference: Ray's ``choose_replicas`` then uses power of two."""
        text = self._extract_text_from_request(pending_request) if pending_request else ""
        if not text:
            return [[]]
        highest, lowest = 0, float("inf")
        unknown: list[RunningReplica] = []
        if self._use_replica_queue_len_cache:
            for replica in candidate_replicas:
                queue_len = self._replica_queue_len_cache.get(replica.replica_id)
                if queue_len is None or queue_len >= replica.max_ongoing_requests:
                    unknown.append(replica)
                else:
                    highest, lowest = max(highest, queue_len), min(lowest, queue_len)
        else:
            unknown = list(candidate_replicas)
        if unknown:
            for _replica, queue_len in await self._probe_queue_lens(unknown, 0):
                if queue_len is not None:
                    highest, lowest = max(highest, queue_len), min(lowest, queue_len)
        threshold = self._imbalanced_threshold
        if threshold is not None and highest - lowest > threshold:
            return [[]]
        candidates = [replica.replica_id.to_full_id_str() for replica in candidate_replicas]
        matched_text, matched = await self._tree_actor.prefix_match.remote(text, candidates)
        chosen: list[str] | None
        if len(matched_text) / len(text) < (self._match_rate_threshold or 0.0):
            chosen = await self._tree_actor.get_smallest_tenants.remote()
        else:
            chosen = matched
        return [
            [
                self._replicas[ReplicaID.from_full_id_str(replica_id)]
                for replica_id in chosen or []
                if ReplicaID.from_full_id_str(replica_id) in self._replicas
            ]
        ]

    def on_request_routed(
        self,
        pending_request: PendingRequest,
        replica_id: ReplicaID,
        result: ReplicaResult,
    ) -> None:
        """Record the prompt under the replica it went to (Ray's step), sent without waiting."""
        text = self._extract_text_from_request(pending_request) if pending_request else ""
        if text:
            self._tree_actor.insert.remote(text, replica_id.to_full_id_str(), time.time())


def router_options(router: str) -> dict[str, Any]:
    """The model server deployment's options for a ``request_router`` (none for ``default``:
    Serve's own power of two choices)."""
    path = ROUTER_CLASSES.get(router)
    if path is None:
        return {}
    config = RequestRouterConfig(request_router_class=path)  # type: ignore[arg-type]
    return {"request_router_config": config}


class RouterIngress:
    """The ingress of a model application whose model server has its own request router.

    Serve refuses a custom router on an application's ingress deployment when its HAProxy
    ingress is on (HAProxy would balance that deployment's HTTP traffic itself and bypass the
    router). A model application has no HTTP route: the gateway calls the model server's
    deployment by name, through a handle, and the handle's router is the one configured. So
    the model server becomes a second deployment of its application, behind this stub, which is
    never called: it exists because Serve makes a deployment part of an application by binding
    it to the ingress. No CPU, one replica."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def __call__(self) -> str:
        return "this application is called through its model server's handle"


RouterIngressDeployment = serve.deployment(RouterIngress)


def with_router_ingress(server: Application) -> Application:
    """``server`` (a bound model server with its router options) behind the stub ingress."""
    return RouterIngressDeployment.options(  # type: ignore[attr-defined]
        name=INGRESS_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0}
    ).bind(server)
