"""Which namespace serves a project: order, pins, claims (dependency confusion)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core.search_order import PolicyError, SearchPolicy

NAMESPACES = ["corp", "public"]


def policy(**kw: object) -> SearchPolicy:
    return SearchPolicy.parse(NAMESPACES, **kw)  # type: ignore[arg-type]


def test_a_claimed_name_comes_only_from_its_claimer_even_when_it_lacks_it() -> None:
    p = policy(order="public,corp", claims=["corp=acme-*"])
    held = {("corp", "acme-utils"), ("public", "acme-utils"), ("public", "acme-secret")}

    def choose(name: str) -> str | None:
        return p.choose(name, lambda ns: (ns, name) in held)

    assert choose("acme-utils") == "corp"  # public comes first in the order: the claim wins
    assert choose("acme-secret") is None  # the public upload under a claimed name: nobody
    assert choose("Acme_Secret") is None  # normalized before matching
    assert choose("requests") is None  # held nowhere


def test_the_order_decides_otherwise_and_a_pin_overrides_it() -> None:
    held = {("corp", "legacy-tool"), ("public", "legacy-tool"), ("public", "requests")}
    p = policy(order="corp,public", pins=["legacy-*=public"])

    def choose(name: str) -> str | None:
        return p.choose(name, lambda ns: (ns, name) in held)

    assert choose("requests") == "public"  # only in public: falls through the order
    assert choose("legacy-tool") == "public"  # pinned, although corp comes first
    assert policy(order="corp,public").choose("legacy-tool", lambda ns: True) == "corp"
    # A pinned name its namespace lacks is served by nobody.
    assert p.choose("legacy-gone", lambda ns: ns == "corp") is None


def test_patterns_and_names_are_normalized_alike() -> None:
    p = policy(claims=["corp=Acme_*"])
    assert p.claimer("acme-utils") == "corp"
    assert p.candidates("ACME.Utils") == ("corp",)


def test_namespaces_left_out_of_the_order_come_last() -> None:
    p = SearchPolicy.parse(["a", "b", "c"], order="c")
    assert p.order == ("c", "a", "b")
    assert SearchPolicy.parse(["a", "b"]).order == ("a", "b")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"order": "corp,pypi"}, "'pypi', which is not a namespace"),
        ({"order": "corp,corp"}, "names a namespace twice"),
        ({"pins": ["legacy-*"]}, "expected LEFT=RIGHT"),
        ({"pins": ["x=pypi"]}, "'pypi' is not a namespace"),
        ({"claims": ["pypi=acme-*"]}, "'pypi' is not a namespace"),
        ({"claims": ["corp="]}, "expected LEFT=RIGHT"),
    ],
)
def test_a_bad_policy_is_one_clear_error(kw: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy(**kw)


@pytest.mark.parametrize("bad", ["", "Corp", "-x", "a" * 33, "a b", "ns/x"])
def test_namespace_names_are_checked(bad: str) -> None:
    with pytest.raises(PolicyError, match="namespace name"):
        SearchPolicy.parse([bad, "public"])
    with pytest.raises(PolicyError, match="twice"):
        SearchPolicy.parse(["public", "public"])


def test_a_pin_that_a_claim_overrides_is_reported() -> None:
    p = policy(pins=["acme-*=public"], claims=["corp=acme-*"])
    assert p.choose("acme-utils", lambda ns: True) == "corp"
    assert any("the claim wins" in w for w in p.check())
    assert policy(pins=["legacy-*=public"], claims=["corp=acme-*"]).check() == []


names = st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]", fullmatch=True)


@given(
    names,
    st.sets(st.sampled_from(NAMESPACES)),
    st.sampled_from(["corp,public", "public,corp"]),
    st.lists(st.sampled_from(["a*", "acme-*", "*-utils", "legacy-*"]), max_size=3),
)
def test_no_order_or_pin_serves_a_claimed_name_from_elsewhere(
    name: str, holders: set[str], order: str, pins: list[str]
) -> None:
    p = policy(order=order, pins=[f"{pat}=public" for pat in pins], claims=["corp=acme-*"])
    chosen = p.choose(name, lambda ns: ns in holders)
    if name.startswith("acme-"):
        assert chosen == ("corp" if "corp" in holders else None)
    elif chosen is not None:
        assert chosen in holders  # whoever serves it lists it
