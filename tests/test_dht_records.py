from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core.dht_records import (
    KEY_LEN,
    ProviderLimits,
    ProviderStore,
    RootStore,
    content_key,
    root_key,
)
from p2pkg.core.root import public_bytes
from p2pkg.testing.signer import make_root, signed_bytes, tamper_signature

K = content_key(b"\x01" * 32)


def test_providers_expire_and_ttl_is_capped() -> None:
    s = ProviderStore(ProviderLimits(max_ttl=100, min_ttl=10))
    assert s.add(K, "10.0.0.1", 8000, ttl=10**9, now=0)
    assert s.get(K, 10, now=99) == [("10.0.0.1", 8000)]
    assert s.get(K, 10, now=101) == []  # capped at 100 s


def test_records_per_source_address_are_bounded() -> None:
    s = ProviderStore(ProviderLimits(per_source=2))
    for port in range(1000, 1100):
        s.add(K, "10.0.0.1", port, ttl=3600 + port, now=0)
    assert sorted(s.get(K, 100, now=1)) == [("10.0.0.1", 1098), ("10.0.0.1", 1099)]
    s.add(K, "10.0.0.2", 1, ttl=3600, now=0)
    assert len(s.get(K, 100, now=1)) == 3


def test_bounds_hold_under_a_flood() -> None:
    limits = ProviderLimits(per_key=8, keys=50)
    s = ProviderStore(limits)
    for i in range(5000):
        s.add(content_key(i.to_bytes(4, "big")), f"10.0.{i % 250}.{i % 7}", 8000, 3600, now=0)
        s.add(K, f"10.1.{i % 250}.{i % 200}", 8000, 3600, now=0)
    assert len(s.records) <= limits.keys
    assert all(len(e) <= limits.per_key for e in s.records.values())
    assert s.refused > 0


@given(
    st.lists(
        st.tuples(
            st.binary(min_size=KEY_LEN, max_size=KEY_LEN),
            st.ip_addresses(v=4).map(str),
            st.integers(-5, 70_000),
            st.floats(-1e9, 1e9, allow_nan=False),
            st.floats(0, 1e6),
        ),
        max_size=200,
    )
)
def test_provider_store_invariants(ops: list[tuple[bytes, str, int, float, float]]) -> None:
    limits = ProviderLimits(per_key=4, per_source=2, keys=10)
    s = ProviderStore(limits)
    for key, ip, port, ttl, now in ops:
        s.add(key, ip, port, ttl, now)
        assert len(s.records) <= limits.keys
        for entry in s.records.values():
            assert len(entry) <= limits.per_key
            per_ip: dict[str, int] = {}
            for held_ip, _ in entry:
                per_ip[held_ip] = per_ip.get(held_ip, 0) + 1
            assert all(c <= limits.per_source for c in per_ip.values())
            assert all(0 < a[1] < 65536 for a in entry)


def test_root_store_keeps_the_highest_valid_version() -> None:
    key_a = Ed25519PrivateKey.generate()
    k = root_key(public_bytes(key_a))
    s = RootStore()
    v2 = signed_bytes(make_root(2, [key_a]), [key_a])
    v1 = signed_bytes(make_root(1, [key_a]), [key_a])
    assert s.put(k, v2)
    assert not s.put(k, v1)  # lower version: kept v2
    assert s.get(k) == v2
    assert not s.put(k, tamper_signature(signed_bytes(make_root(3, [key_a]), [key_a])))
    mallory = Ed25519PrivateKey.generate()
    assert not s.put(k, signed_bytes(make_root(9, [mallory]), [mallory]))  # wrong key for k
    assert not s.put(k, b"garbage")
    assert s.get(k) == v2 and s.refused == 3
