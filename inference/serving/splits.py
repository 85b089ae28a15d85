"""Weighted aliases: which target serves a request (a canary, an A/B arm).

A weighted alias (``spec.AliasSpec``) names several models, each with a weight. The gateway asks
:meth:`WeightedAlias.choose` for every request to the alias; the answer is the target that
serves it, and so the request's prices, context length, timeout, the response's ``model``, the
usage event's ``served_model`` and the metrics are that target's.

The rule (docs/deployment-spec.md, "Weighted aliases"):

- each target gets ``weight / total`` of the requests; a weight of 0 gets none (it drains);
- with a ``user`` in the request, the choice is deterministic: a stable hash (BLAKE2b) of the
  organisation, the alias and the user is a fraction ``u`` in [0, 1), and the target is the one
  whose cumulative share contains ``u``. The same user of the same organisation lands on the same
  target on every replica and after a restart, as long as the weights stay; targets are laid out
  in the spec's order (the primary first), so moving weight from the primary to a canary at a
  constant total only moves users from the primary into the canary, never back;
- without one, a uniform random point (not a security decision: ``random`` is enough);
- only targets the organisation may use take part (``usable``): an alias never widens access,
  so an organisation that may not use the canary is served by the other targets, at their
  weights; if it may use none, there is no target (the gateway answers 404).

Pure Python, no Django, no I/O: the gateway builds the table once per config
(:func:`weighted_aliases`) and the choice is a hash and a short loop.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

from inference.serving.spec import AliasSpec, RouteSpec

_RANDOM = random.Random()  # noqa: S311 (traffic splitting, not a secret)


def user_fraction(org_id: str, alias: str, user: str) -> int:
    """The user's stable point as a 64-bit integer (``u * 2**64``): BLAKE2b of the organisation,
    the alias and the user, separated so no two triples run together."""
    digest = hashlib.blake2b(
        f"{org_id}\x1f{alias}\x1f{user}".encode(), digest_size=8, person=b"vl-split"
    ).digest()
    return int.from_bytes(digest, "big")


def pick(weights: Sequence[int], point: int) -> int:
    """The index of the target whose cumulative range ``[start, start + weight)`` holds
    ``point`` (``0 <= point < sum(weights)``); a weight of 0 has an empty range."""
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    raise ValueError("point beyond the total weight")


@dataclass(frozen=True)
class WeightedAlias:
    """One weighted alias, ready to choose: its targets with a weight above 0, in spec order."""

    name: str
    targets: tuple[RouteSpec, ...]
    weights: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.weights)

    def usable_targets(
        self, usable: Container[str] | None = None
    ) -> tuple[tuple[RouteSpec, ...], tuple[int, ...]]:
        """The targets (and their weights) that take part for an organisation that may use the
        names in ``usable`` (all, when ``None``): the only ones that can serve it, so the only
        ones that may describe the alias to it."""
        targets, weights = self.targets, self.weights
        if usable is not None and not all(target.name in usable for target in targets):
            kept = [(t, w) for t, w in zip(targets, weights, strict=True) if t.name in usable]
            targets = tuple(t for t, _ in kept)
            weights = tuple(w for _, w in kept)
        return targets, weights

    def choose(
        self,
        *,
        org_id: str,
        user: str | None = None,
        usable: Container[str] | None = None,
        rng: random.Random | None = None,
    ) -> RouteSpec | None:
        """The target that serves one request (see the module docstring); ``None`` when the
        organisation may use no target of a weight above 0."""
        targets, weights = self.usable_targets(usable)
        total = sum(weights)
        if total <= 0:
            return None
        if user:
            point = (user_fraction(org_id, self.name, user) * total) >> 64
        else:
            point = (rng or _RANDOM).randrange(total)
        return targets[pick(weights, point)]


def weighted_aliases(
    aliases: Sequence[AliasSpec], models: Mapping[str, RouteSpec]
) -> dict[str, WeightedAlias]:
    """The gateway's table of weighted aliases, by name. ``models`` maps model names to routes
    (``spec.route_table``, which has already refused unknown targets and names routed twice);
    targets of weight 0 are left out here, so they are never chosen."""
    table: dict[str, WeightedAlias] = {}
    for alias in aliases:
        live = [(models[t.model], t.weight) for t in alias.targets if t.weight > 0]
        table[alias.name] = WeightedAlias(
            name=alias.name,
            targets=tuple(route for route, _ in live),
            weights=tuple(weight for _, weight in live),
        )
    return table
