"""The choice of a weighted alias's target (``inference/serving/splits.py``) and the spec's rules
for weighted aliases (``inference/serving/spec.py``): pure, no Redis, no Ray.

Convergence is checked against a stated tolerance: for ``n`` choices with a share ``p`` the count
has a standard deviation of ``sqrt(n p (1 - p))``; each test allows five of them (a false failure
about once in three million runs), and the random tests use a seeded generator anyway, so they
are reproducible.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from inference.serving.spec import AliasSpec, AliasTarget, GatewayConfig, RouteSpec, route_table
from inference.serving.splits import WeightedAlias, pick, user_fraction, weighted_aliases

N = 2000


def _route(name: str) -> RouteSpec:
    return RouteSpec(name=name, deployment=f"model-{name}", engine="synthetic", context_length=64)


def _alias(name: str, **weights: int) -> AliasSpec:
    return AliasSpec(
        name=name, targets=[AliasTarget(model=m, weight=w) for m, w in weights.items()]
    )


ROUTES = {name: _route(name) for name in ("stable", "canary", "third")}


def _table(*aliases: AliasSpec) -> dict[str, WeightedAlias]:
    return weighted_aliases(list(aliases), ROUTES)


def _within(count: int, n: int, share: float) -> bool:
    """``count`` of ``n`` is within five standard deviations of ``n * share``."""
    sd = math.sqrt(n * share * (1 - share))
    return abs(count - n * share) <= 5 * sd


def test_random_choices_converge_to_the_weights_over_2000_requests() -> None:
    alias = _table(_alias("chat", stable=90, canary=10))["chat"]
    rng = random.Random(13)
    counts = Counter(alias.choose(org_id="org", rng=rng).name for _ in range(N))  # type: ignore[union-attr]
    assert set(counts) == {"stable", "canary"}
    # 2,000 at 10%: 200 expected, sd 13.4, so 133..267 passes.
    assert _within(counts["canary"], N, 0.10), counts
    assert counts["stable"] + counts["canary"] == N


def test_three_targets_converge_to_their_shares() -> None:
    alias = _table(_alias("chat", stable=50, canary=30, third=20))["chat"]
    rng = random.Random(7)
    counts = Counter(alias.choose(org_id="org", rng=rng).name for _ in range(N))  # type: ignore[union-attr]
    for name, share in (("stable", 0.5), ("canary", 0.3), ("third", 0.2)):
        assert _within(counts[name], N, share), counts


def test_users_are_spread_by_the_weights_too() -> None:
    """Deterministic per user, but over many users the hash spreads them as the weights say."""
    alias = _table(_alias("chat", stable=90, canary=10))["chat"]
    counts = Counter(
        alias.choose(org_id="org", user=f"user-{i}").name  # type: ignore[union-attr]
        for i in range(N)
    )
    assert _within(counts["canary"], N, 0.10), counts


def test_the_same_user_always_gets_the_same_target() -> None:
    alias = _table(_alias("chat", stable=50, canary=50))["chat"]
    for i in range(200):
        user = f"user-{i}"
        first = alias.choose(org_id="org-a", user=user)
        assert all(alias.choose(org_id="org-a", user=user) is first for _ in range(5))
    # A rebuilt table (another replica, a restart) agrees: the hash is stable, not Python's.
    again = _table(_alias("chat", stable=50, canary=50))["chat"]
    assert all(
        again.choose(org_id="org-a", user=f"user-{i}").name  # type: ignore[union-attr]
        == alias.choose(org_id="org-a", user=f"user-{i}").name  # type: ignore[union-attr]
        for i in range(200)
    )


def test_the_user_hash_depends_on_organisation_alias_and_user() -> None:
    assert user_fraction("o", "a", "u") == user_fraction("o", "a", "u")
    assert len({user_fraction("o", "a", "u"), user_fraction("p", "a", "u")}) == 2
    assert len({user_fraction("o", "a", "u"), user_fraction("o", "b", "u")}) == 2
    # Separated fields: ("o", "ab", "c") and ("o", "a", "bc") do not collide.
    assert user_fraction("o", "ab", "c") != user_fraction("o", "a", "bc")
    # The same user name in two organisations is two independent points: over many users about
    # half of a 50/50 alias's users land on different arms in the two organisations.
    alias = _table(_alias("chat", stable=50, canary=50))["chat"]
    differ = sum(
        alias.choose(org_id="org-a", user=f"u{i}").name  # type: ignore[union-attr]
        != alias.choose(org_id="org-b", user=f"u{i}").name  # type: ignore[union-attr]
        for i in range(N)
    )
    assert _within(differ, N, 0.5)


def test_a_weight_of_zero_drains_its_target() -> None:
    alias = _table(_alias("chat", stable=100, canary=0))["chat"]
    rng = random.Random(1)
    assert {alias.choose(org_id="o", rng=rng).name for _ in range(N)} == {"stable"}  # type: ignore[union-attr]
    assert {alias.choose(org_id="o", user=f"u{i}").name for i in range(N)} == {"stable"}  # type: ignore[union-attr]
    # The primary at 0 drains the primary.
    flipped = _table(_alias("chat", stable=0, canary=5))["chat"]
    assert {flipped.choose(org_id="o", rng=rng).name for _ in range(N)} == {"canary"}  # type: ignore[union-attr]


def test_a_single_target_takes_everything() -> None:
    alias = _table(_alias("chat", canary=1))["chat"]
    assert {alias.choose(org_id="o").name for _ in range(100)} == {"canary"}  # type: ignore[union-attr]
    assert alias.choose(org_id="o", user="someone").name == "canary"  # type: ignore[union-attr]


def test_raising_a_canary_at_a_constant_total_only_moves_users_into_it() -> None:
    before = _table(_alias("chat", stable=90, canary=10))["chat"]
    after = _table(_alias("chat", stable=80, canary=20))["chat"]
    users = [f"user-{i}" for i in range(N)]
    was = {u: before.choose(org_id="o", user=u).name for u in users}  # type: ignore[union-attr]
    now = {u: after.choose(org_id="o", user=u).name for u in users}  # type: ignore[union-attr]
    assert all(now[u] == "canary" for u in users if was[u] == "canary")
    assert sum(now[u] == "canary" for u in users) > sum(was[u] == "canary" for u in users)


def test_only_targets_the_organisation_may_use_take_part() -> None:
    alias = _table(_alias("chat", stable=90, canary=10))["chat"]
    rng = random.Random(3)
    only_stable = frozenset({"chat", "stable"})
    assert {
        alias.choose(org_id="o", usable=only_stable, rng=rng).name  # type: ignore[union-attr]
        for _ in range(N)
    } == {"stable"}
    # A user who would have had the canary gets the stable target instead, not an error.
    canary_users = [
        f"u{i}"
        for i in range(500)
        if alias.choose(org_id="o", user=f"u{i}").name == "canary"  # type: ignore[union-attr]
    ]
    assert canary_users
    for user in canary_users:
        assert alias.choose(org_id="o", user=user, usable=only_stable).name == "stable"  # type: ignore[union-attr]
    # An organisation that may use no target of a weight above 0 gets none.
    drained = _table(_alias("chat", stable=0, canary=10))["chat"]
    assert drained.choose(org_id="o", usable=only_stable) is None
    assert alias.choose(org_id="o", usable=frozenset({"chat"})) is None


def test_pick_lays_targets_out_in_order() -> None:
    assert [pick([3, 0, 2], point) for point in range(5)] == [0, 0, 0, 2, 2]
    with pytest.raises(ValueError, match="beyond"):
        pick([1, 1], 2)


def test_the_spec_refuses_bad_weighted_aliases() -> None:
    with pytest.raises(ValidationError, match="twice"):
        AliasSpec.model_validate(
            {"name": "chat", "targets": [{"model": "stable", "weight": 1}] * 2}
        )
    with pytest.raises(ValidationError, match="add up to 0"):
        _alias("chat", stable=0, canary=0)
    with pytest.raises(ValidationError):
        _alias("chat", stable=10001)
    with pytest.raises(ValidationError):
        _alias("chat", stable=-1)
    with pytest.raises(ValidationError):
        AliasSpec(name="chat", targets=[])


def test_route_table_refuses_a_name_routed_twice_and_unknown_targets() -> None:
    models = [
        _route("stable").model_copy(update={"aliases": ["old"]}),
        _route("canary"),
    ]
    table = route_table(models, [_alias("chat", stable=90, canary=10)])
    assert table["chat"].name == "stable"  # described by its heaviest target
    with pytest.raises(ValueError, match="routed twice"):
        route_table(models, [_alias("canary", stable=1, canary=1)])  # a model's name
    with pytest.raises(ValueError, match="routed twice"):
        route_table(models, [_alias("old", stable=1, canary=1)])  # a plain alias's name
    with pytest.raises(ValueError, match="routed twice"):
        route_table(models, [_alias("chat", stable=1), _alias("chat", canary=1)])
    with pytest.raises(ValueError, match="unknown models"):
        route_table(models, [_alias("chat", stable=1, nowhere=1)])
    # The gateway's config refuses the same, so a bad config fails the apply, not a request.
    with pytest.raises(ValueError, match="routed twice"):
        GatewayConfig(
            revision=uuid.uuid4().hex, models=models, aliases=[_alias("old", stable=1)]
        ).routes()
