from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2pkg.core.dht_records import (
    KEY_LEN,
    ProviderLimits,
    ProviderStore,
    RootStore,
    RoutingLimits,
    content_key,
    host_key,
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


def keys(n: int, tag: bytes = b"k") -> list[bytes]:
    return [content_key(tag + i.to_bytes(4, "big")) for i in range(n)]


def test_hosts_are_ipv4_addresses_and_ipv6_slash_64s() -> None:
    assert host_key("10.0.0.1") == "10.0.0.1" != host_key("10.0.0.2")
    assert host_key("2001:db8:1:2::1") == host_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert host_key("2001:db8:1:3::1") != host_key("2001:db8:1:2::1")
    assert host_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert host_key("not-an-ip") == "not-an-ip"


def test_routing_limits_per_bucket_and_per_table() -> None:
    limits = RoutingLimits(per_bucket=2, per_table=4)
    assert limits.admits(0, 0) and limits.admits(1, 3)
    assert not limits.admits(2, 2)  # the bucket's share is taken
    assert not limits.admits(0, 4)  # the table's share is taken


def test_a_host_holds_its_share_and_its_oldest_records_give_way() -> None:
    s = ProviderStore(ProviderLimits(source_records=3))
    for i, key in enumerate(keys(5)):
        assert s.add(key, "10.0.0.1", 8000, 3600, now=i)
    assert s.held_by("10.0.0.1") == 3
    assert list(s.records) == keys(5)[2:]  # the newest three
    assert s.add(keys(5)[2], "10.0.0.1", 8000, 3600, now=9)  # a refresh makes it the youngest
    assert s.add(content_key(b"new"), "10.0.0.1", 8000, 3600, now=10)
    assert set(s.records) == {keys(5)[2], keys(5)[4], content_key(b"new")}
    assert s.add(keys(1)[0], "10.0.0.2", 8000, 3600, now=11)  # other hosts are not affected
    assert s.holdings() == {"10.0.0.1": 3, "10.0.0.2": 1}


def test_a_full_table_takes_from_the_biggest_holder_oldest_first() -> None:
    s = ProviderStore(ProviderLimits(keys=10, source_records=100))
    for i, key in enumerate(keys(6, b"a")):
        assert s.add(key, "10.0.0.1", 1, 3600, now=i)
    for i, key in enumerate(keys(4, b"b")):
        assert s.add(key, "10.0.0.2", 1, 3600, now=10 + i)
    assert len(s.records) == 10
    # An honest newcomer: the oldest record of the biggest holder (10.0.0.1) makes room.
    assert s.add(content_key(b"honest"), "10.0.0.3", 1, 3600, now=20)
    assert keys(6, b"a")[0] not in s.records and s.evicted == 1
    assert s.holdings() == {"10.0.0.1": 5, "10.0.0.2": 4, "10.0.0.3": 1}
    # Shares even out: 10.0.0.1 (5) gives way again, then both flooders hold 4.
    assert s.add(content_key(b"honest2"), "10.0.0.3", 1, 3600, now=21)
    assert s.holdings() == {"10.0.0.1": 4, "10.0.0.2": 4, "10.0.0.3": 2}
    # A host never takes from one holding fewer records than itself: the biggest
    # holds 4, so 10.0.0.1 (4) is refused a new key rather than evict anyone.
    assert not s.add(content_key(b"more"), "10.0.0.1", 1, 3600, now=22)
    assert s.refused == 1
    # Refreshing a record it holds is always accepted.
    assert s.add(keys(6, b"a")[5], "10.0.0.1", 1, 3600, now=23)


def test_two_flooding_addresses_cannot_lock_out_an_announcer() -> None:
    """The issue's numbers: 20,000 keys from two addresses, then an honest announcer."""
    s = ProviderStore()
    for i, key in enumerate(keys(20_000, b"flood")):
        s.add(key, f"10.66.0.{1 + i % 2}", 9000, 24 * 3600, now=0)
    assert s.held_by("10.66.0.1") == s.held_by("10.66.0.2") == ProviderLimits().source_records
    honest = keys(500, b"honest")
    assert all(s.add(key, "10.0.0.1", 8000, 3600, now=1) for key in honest)
    # Even with the table full (more flooding hosts), the honest keys stay and new ones go in.
    for i, key in enumerate(keys(20_000, b"flood2")):
        s.add(key, f"10.66.1.{1 + i % 4}", 9000, 24 * 3600, now=2)
    assert len(s.records) == ProviderLimits().keys
    assert all(s.add(key, "10.0.0.1", 8000, 3600, now=3) for key in keys(500, b"later"))
    assert all(s.get(key, 1, now=4) == [("10.0.0.1", 8000)] for key in honest[-100:])


@given(
    st.lists(
        st.tuples(
            st.binary(min_size=KEY_LEN, max_size=KEY_LEN),
            st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2"])
            | st.ip_addresses(v=4).map(str),
            st.integers(-5, 70_000),
            st.floats(-1e9, 1e9, allow_nan=False),
            st.floats(0, 1e6),
        ),
        max_size=200,
    )
)
def test_provider_store_invariants(ops: list[tuple[bytes, str, int, float, float]]) -> None:
    limits = ProviderLimits(per_key=4, per_source=2, keys=10, source_records=6)
    s = ProviderStore(limits)
    for key, ip, port, ttl, now in ops:
        s.add(key, ip, port, ttl, now)
        assert len(s.records) <= limits.keys
        held: dict[str, int] = {}
        for entry in s.records.values():
            assert entry, "no key without records"
            assert len(entry) <= limits.per_key
            per_ip: dict[str, int] = {}
            for held_ip, _ in entry:
                per_ip[held_ip] = per_ip.get(held_ip, 0) + 1
                held[host_key(held_ip)] = held.get(host_key(held_ip), 0) + 1
            assert all(c <= limits.per_source for c in per_ip.values())
            assert all(0 < a[1] < 65536 for a in entry)
        # The per-host index agrees with the table, and every share is bounded.
        assert s.holdings() == held
        assert all(c <= limits.source_records for c in held.values())


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
