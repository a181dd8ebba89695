"""The announce plan: new keys at once, every key again at ttl/2, nothing twice for a poke."""

from __future__ import annotations

from p2pkg.core.announce import AnnouncePlan


def test_new_keys_are_due_at_once_and_again_after_half_the_ttl() -> None:
    plan = AnnouncePlan(ttl=100.0)
    assert plan.due([b"a", b"b"], 0.0) == [b"a", b"b"]
    plan.announced(b"a", 0.0)
    plan.announced(b"b", 1.0)
    assert plan.due([b"a", b"b"], 10.0) == []  # a poke with nothing new: nothing
    assert plan.due([b"a", b"b", b"c"], 10.0) == [b"c"]  # something new: that alone
    plan.announced(b"c", 10.0)
    assert plan.next_due(10.0) == 50.0
    assert plan.due([b"a", b"b", b"c"], 50.0) == [b"a"]
    assert plan.due([b"a", b"b", b"c"], 51.0) == [b"a", b"b"]


def test_a_failed_announcement_stays_due_and_a_dropped_key_is_new_again() -> None:
    plan = AnnouncePlan(ttl=100.0)
    assert plan.due([b"a"], 0.0) == [b"a"]  # announcing failed: not marked
    assert plan.due([b"a"], 1.0) == [b"a"]
    plan.announced(b"a", 1.0)
    assert plan.due([], 2.0) == []  # no longer held: forgotten
    assert plan.due([b"a"], 3.0) == [b"a"]


def test_the_root_record_is_put_when_it_changes_or_grows_old() -> None:
    plan = AnnouncePlan(ttl=100.0)
    assert plan.root_due(b"root v1", 0.0)
    plan.root_put(b"root v1", 0.0)
    assert not plan.root_due(b"root v1", 10.0)
    assert plan.root_due(b"root v2", 10.0)
    assert plan.root_due(b"root v1", 50.0)
    assert AnnouncePlan(ttl=100.0).next_due(5.0) == 55.0


def test_whatever_next_due_names_is_due_then() -> None:
    """The loop sleeps until next_due and announces what is due: they must agree to the
    last bit, or the loop wakes for nothing, at once, for ever (found by netsim)."""
    import random

    rng = random.Random(7)
    for _ in range(2000):
        plan = AnnouncePlan(ttl=3600.0)
        start = rng.uniform(-1800.0, 4000.0) + rng.random() * 1e-7
        plan.announced(b"k", start)
        at = plan.next_due(start)
        assert plan.due([b"k"], at) == [b"k"]
