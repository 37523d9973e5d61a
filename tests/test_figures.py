"""Figures a user reads are true: percentiles within what was observed (exact for
small counts), batch sizes as integers, null (not NaN) when nothing was measured,
and file mode's session time from the input to the last output, teardown apart."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

import chains
from chains import Text, filemode
from runtime.metrics import SIZE_BUCKETS, Histogram


def test_fifty_single_item_batches_report_a_batch_size_of_one():
    h = Histogram(SIZE_BUCKETS, integer=True)
    for _ in range(50):
        h.observe(1)
    s = h.summary()
    assert (s["p50"], s["p95"], s["p99"]) == (1, 1, 1)
    assert all(isinstance(s[k], int) for k in ("min", "p50", "p95", "p99", "max"))


def test_one_sample_is_its_own_percentiles():
    h = Histogram()
    h.observe(1.9)
    assert h.quantile(0.5) == h.quantile(0.99) == 1.9
    assert h.summary(1000.0)["p50"] == pytest.approx(1900.0)


def test_small_counts_are_exact_nearest_rank():
    h = Histogram()
    values = [0.013, 0.002, 0.5, 0.041, 0.007]
    for v in values:
        h.observe(v)
    assert h.quantile(0.5) == 0.013  # the 3rd of 5, an observed value
    assert h.quantile(0.95) == 0.5


def test_past_the_exact_samples_percentiles_stay_within_the_observed_range():
    rng = random.Random(3)
    h = Histogram(SIZE_BUCKETS, integer=True)
    for _ in range(Histogram.EXACT * 4):
        h.observe(rng.choice((5, 6, 7)))  # one bucket (4, 6] and the next (6, 8]
    assert not h.samples  # memory stays flat past EXACT
    for q in (0.01, 0.5, 0.95, 0.99, 1.0):
        v = h.quantile(q)
        assert v is not None and 5 <= v <= 7 and v == int(v)
    t = Histogram()
    for _ in range(Histogram.EXACT * 4):
        t.observe(rng.uniform(0.0101, 0.0102))  # inside one ~21% bucket
    for q in (0.01, 0.5, 0.99):
        assert t.min <= t.quantile(q) <= t.max  # type: ignore[operator]


def test_empty_histograms_are_null_and_a_snapshot_is_valid_json():
    h = Histogram()
    assert h.quantile(0.5) is None and h.mean is None
    assert set(h.summary().values()) == {0, None}

    @chains.node
    async def shout(t: Text) -> Text:
        return Text(text=t.text.upper())

    @chains.chain
    def loud(t: Text):
        return shout(t)

    async def go() -> dict:
        async with chains.Runtime(loud) as rt:
            return rt.metrics.snapshot()  # nothing served: every histogram empty

    import anyio

    snap = anyio.run(go)
    text = json.dumps(snap, allow_nan=False)  # raises on NaN
    assert json.loads(text)["stages"]["shout"]["service_ms"]["p50"] is None


class _Clock:
    """A clock the test steps: run_file's timings come out exactly as scripted."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


CLOCK = _Clock()


@chains.node
class SlowToClose:
    """Serves at once; its close (the runtime's teardown) takes 5 s of the test clock."""

    def __call__(self, t: Text) -> Text:
        CLOCK.t += 0.25  # the reply takes 250 ms
        return Text(text=t.text[::-1])

    def close(self) -> None:
        CLOCK.t += 5.0


@chains.chain
def reverse(t: Text):
    return SlowToClose()(t)


async def test_file_mode_times_input_to_last_output_and_teardown_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(filemode, "_clock", CLOCK)
    doc = tmp_path / "doc.txt"
    doc.write_text("abc")
    out = io.StringIO()
    rc = await filemode.run_file(reverse, doc, None, out=out, err=io.StringIO())
    text = out.getvalue()
    assert rc == 0 and "output: cba" in text
    assert "session: input to last output 250 ms; first output after 250 ms" in text
    assert "(then 5000 ms to close the runtime)" in text
