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


def test_a_slow_peer_is_backed_off_not_banned_and_asked_last() -> None:
    """Slow retrieval: a peer cut off as too slow goes last, whatever its tier, for a while."""
    book = PeerBook(PeerBookConfig(backoff=2.0, backoff_cap=5.0))
    book.add("http://lan", Tier.LAN)
    book.add("http://mirror", Tier.MIRROR)
    book.observe_transfer("http://lan", 10 << 20, 1.0)
    book.observe_slow("http://lan", now=10.0, rate=1.0)
    assert [r.url for r in book.live(10.0)] == ["http://mirror", "http://lan"]
    assert book.banned(10.0) == {} and book.rates()["http://lan"] == 1.0
    assert book.backoffs(10.0) == {"http://lan": 12.0}
    row = next(r for r in book.summary(10.0) if r["url"] == "http://lan")
    assert row["backed_off_for"] == 2.0 and row["banned"] is None
    # Back-off over: back in its tier, but after the peers of its tier in good standing.
    assert book.backoffs(12.0) == {}
    book.add("http://lan2", Tier.LAN)
    assert [r.url for r in book.live(12.0)] == ["http://lan2", "http://lan", "http://mirror"]
    # Slow again: the back-off doubles (up to the cap); a success ends it at once.
    book.observe_slow("http://lan", now=12.0)
    assert book.backoffs(12.0) == {"http://lan": 16.0}
    book.observe_slow("http://lan", now=16.0)
    assert book.backoffs(16.0) == {"http://lan": 21.0}
    book.observe_transfer("http://lan", 1 << 20, 0.1)
    assert book.backoffs(16.0) == {} and book.get("http://lan").failures == 0  # type: ignore[union-attr]


def test_a_failure_reported_without_a_time_backs_off_from_the_next_question() -> None:
    """The root follower counts peers it cut off without a clock: the back-off starts later."""
    book = PeerBook(PeerBookConfig(backoff=2.0))
    book.add("http://trickler")
    book.add("http://honest")
    book.observe_failure("http://trickler")
    assert [r.url for r in book.live(50.0)] == ["http://honest", "http://trickler"]
    assert book.backoffs(51.0) == {"http://trickler": 52.0}
    assert [r.url for r in book.live(52.0)] == ["http://honest", "http://trickler"]  # failing


def test_an_answer_that_is_not_a_rate_sample_keeps_the_rate() -> None:
    book = PeerBook()
    book.add("far")
    book.observe_transfer("far", 10 << 20, 0.4)
    book.observe_failure("far", 0.0)
    book.observe_transfer("far", 100_000, 0.15, rate_sample=False)  # an object batch
    record = book.get("far")
    assert record is not None
    assert record.rate == 25 << 20
    assert record.failures == 0  # still a success
