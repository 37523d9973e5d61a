"""``chains run FILE --input ...`` prints a chat's tool calls and their results, one
line each, between the reply's words: on ``VLLMChat``'s own tool turn with a scripted
engine (tests/test_tools.py)."""

from __future__ import annotations

import io
from pathlib import Path

from chains import filemode
from tests.test_tools import Script, call, chain_of, lookup_order


async def test_file_mode_prints_each_tool_call_and_result_on_its_line(tmp_path: Path) -> None:
    script = Script([call("lookup_order", order_id="4512"), "It ships Friday."])
    doc = tmp_path / "q.txt"
    doc.write_text("Where is order 4512?")
    out = io.StringIO()
    rc = await filemode.run_file(chain_of(script, [lookup_order]), doc, None, out=out, err=io.StringIO())
    assert rc == 0
    lines = out.getvalue().splitlines()
    calls = [line for line in lines if line.startswith("tool call ")]
    results = [line for line in lines if line.startswith("tool result ")]
    assert len(calls) == 1 and len(results) == 1
    call_id = calls[0].split()[2].rstrip(":")
    assert calls[0] == f'tool call {call_id}: lookup_order({{"order_id":"4512"}})'
    assert results[0].startswith(
        f'tool result {call_id}: lookup_order -> {{"status":"shipped","arrives":"Friday"}} ('
    )
    # the call, its result, then the reply's words
    assert lines.index(calls[0]) < lines.index(results[0]) < lines.index("reply: It ships Friday.")


async def test_file_mode_prints_a_failed_tool_as_a_tool_error_line(tmp_path: Path) -> None:
    def broken(order_id: str) -> str:
        """Always fails."""
        raise RuntimeError("database down")

    script = Script([call("broken", order_id="1"), "Sorry, try later."])
    doc = tmp_path / "q.txt"
    doc.write_text("Where is 1?")
    out = io.StringIO()
    await filemode.run_file(chain_of(script, [broken]), doc, None, out=out, err=io.StringIO())
    errors = [line for line in out.getvalue().splitlines() if line.startswith("tool error ")]
    assert len(errors) == 1
    assert errors[0].endswith(": broken (tool_error): RuntimeError: database down")
