"""What was heard: runtime/heard.py (the words of a reply played by a position),
chains/history.py (a history cut to the heard text), and the session's delivery of
``Heard`` to its nodes (an interrupt listener, an abandoned speculative turn)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import chains
from chains import Stream
from chains.history import HEARD_KEY, INTERRUPTED, MARK, cut_history, heard, record, reply_tag
from chains.messages import Heard, Spoken, WordTiming
from runtime.heard import SpokenTrack, word_error, words_heard


def test_proportional_by_characters_within_a_chunk_whole_words_only() -> None:
    s = Spoken(text="one two three four", duration_ms=1800)  # 18 characters, 100 ms each
    assert words_heard(s, 0) == ""
    assert words_heard(s, 299) == ""  # "one" ends at character 3
    assert words_heard(s, 300) == "one"
    assert words_heard(s, 1250) == "one two"
    assert words_heard(s, 1300) == "one two three"
    assert words_heard(s, 5000) == "one two three four"


def test_word_timing_wins_over_proportion() -> None:
    words = [
        WordTiming(word="one", start_ms=0, end_ms=900),
        WordTiming(word="two", start_ms=900, end_ms=1000),
    ]
    s = Spoken(text="one two", duration_ms=1000, words=words)
    assert words_heard(s, 500) == ""  # proportionally "one" would be heard by 430 ms
    assert words_heard(s, 950) == "one"


def test_track_lays_chunks_on_the_reply_timeline() -> None:
    t = SpokenTrack()
    t.add_ms(300, Spoken(text="Hi there.", duration_ms=300))
    t.add_ms(200, Spoken(text="How are you", duration_ms=600))
    t.add_ms(400)  # the rest of the second chunk's frames
    assert t.text == "Hi there. How are you"
    assert t.heard(50) == ""
    assert t.heard(100) == "Hi"  # 2 of its 9 characters: 67 ms
    assert t.heard(300) == "Hi there."
    assert t.heard(300 + 400) == "Hi there. How are"
    assert t.heard(10_000) == "Hi there. How are you"


def test_word_error_counts_the_words_past_the_common_prefix() -> None:
    assert word_error("a b c", "a b c") == 0
    assert word_error("a b", "a b c") == 1
    assert word_error("a b c d", "a b") == 2


def test_cut_history_keeps_the_heard_part_marked() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help you today?", **reply_tag(3)},
    ]
    assert cut_history(history, [Heard(epoch=3, text="Hello! How can")]) == 1
    assert history[1]["content"] == "Hello! How can" + MARK and history[1][INTERRUPTED]
    assert "epoch" not in history[1]
    assert cut_history(history, [Heard(epoch=3, text="Hello!")]) == 0  # idempotent: the tag is spent


def test_cut_history_leaves_a_fully_heard_reply_and_drops_an_unheard_turn() -> None:
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "Yes  indeed.", **reply_tag(1)},
        {"role": "user", "content": "b (partial)"},
        {"role": "assistant", "content": "Well", **reply_tag(2)},
    ]
    assert cut_history(history, [Heard(epoch=1, text="Yes indeed."), Heard(epoch=2, text="")]) == 1
    assert history == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "Yes  indeed."}]


def test_record_keeps_one_per_turn_and_a_bounded_number() -> None:
    meta: dict = {}
    for e in range(40):
        record(meta, Heard(epoch=e, text=str(e)))
    record(meta, Heard(epoch=39, text="again"))
    kept = heard(meta)
    assert len(kept) == 16 and kept[-1].text == "again" and [h.epoch for h in kept] == list(range(24, 40))
    assert heard() == []  # outside a node call: nothing


async def test_session_delivers_heard_to_nodes_and_calls_interrupt_listeners() -> None:
    seen: list[list[Heard]] = []

    @chains.node
    async def remember(xs: Stream[str]) -> AsyncIterator[str]:
        async for x in xs:
            seen.append(heard())
            yield x

    @chains.chain
    def c(xs: Stream[str]):
        return remember(xs)

    cuts: list[tuple[int, str]] = []
    async with chains.Runtime(c) as rt, rt.session() as sess:
        sess.interrupt_listeners.append(lambda old, reason: cuts.append((old, reason)))
        await sess.send("a")
        assert (await sess.receive()).value == "a"
        sess.interrupt("test")
        sess.tell_heard(Heard(epoch=0, text="half"))
        await sess.send("b")
        assert (await sess.receive()).value == "b"
        sess.close_inputs()
        assert sess.meta[HEARD_KEY][-1].text == "half"
    assert cuts == [(0, "test")]
    assert seen[0] == [] and [h.text for h in seen[1]] == ["half"]


async def test_an_abandoned_speculative_turn_is_heard_as_nothing() -> None:
    @chains.node
    async def echo(xs: Stream[str]) -> AsyncIterator[str]:
        async for x in xs:
            yield x

    @chains.chain
    def c(xs: Stream[str]):
        return echo(xs)

    async with chains.Runtime(c) as rt, rt.session() as sess:
        sess.speculate("first silence")
        spec = sess.epoch
        sess.interrupt("speculation_abandoned")
        sess.close_inputs()
        assert [(h.epoch, h.text) for h in heard(sess.meta)] == [(spec, "")]
