"""The peer book (pure): tiers, bans with expiry, measured rates."""

from __future__ import annotations

from p2pkg.core.peers import PeerBook, PeerBookConfig, Tier


def test_tiers_keep_the_better_one_and_order_the_live_peers() -> None:
    book = PeerBook()
    assert book.add("http://dht", Tier.DHT)
    assert book.add("http://mirror", Tier.MIRROR)
    assert book.add("http://lan", Tier.DHT)
    assert not book.add("http://lan", Tier.LAN)  # found again on the LAN: promoted
    assert not book.add("http://lan", Tier.DHT)  # never demoted
    assert [r.url for r in book.live(0.0)] == ["http://lan", "http://mirror", "http://dht"]


def test_faster_peers_first_within_a_tier() -> None:
    book = PeerBook()
    for url in ("http://a", "http://b", "http://c"):
        book.add(url)
    book.observe_transfer("http://b", 10 << 20, 1.0)
    book.observe_transfer("http://c", 1 << 20, 1.0)
    assert [r.url for r in book.live(0.0)] == ["http://b", "http://c", "http://a"]
    assert set(book.rates()) == {"http://b", "http://c"}


def test_small_transfers_do_not_count_as_rate_samples() -> None:
    book = PeerBook(PeerBookConfig(min_sample_bytes=65_536))
    book.add("http://a")
    book.observe_transfer("http://a", 1000, 0.001)
    assert book.rates() == {} and book.get("http://a").received == 1000  # type: ignore[union-attr]


def test_bans_carry_a_reason_and_expire() -> None:
    book = PeerBook(PeerBookConfig(ban_seconds=60))
    book.add("http://bad")
    book.add("http://good")
    book.ban("http://bad", "chunk 3 failed verification", now=100.0)
    assert book.is_banned("http://bad", 159.9)
    assert book.banned(120.0)["http://bad"].reason == "chunk 3 failed verification"
    assert [r.url for r in book.live(120.0)] == ["http://good"]
    assert not book.is_banned("http://bad", 160.0)  # one more chance after the ban
    row = next(r for r in book.summary(120.0) if r["url"] == "http://bad")
    assert row["banned"] == "chunk 3 failed verification" and row["tier"] == "mirror"
