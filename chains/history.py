"""What the user heard: the runtime's ``Heard`` messages, as a node reads them.

Why: a reply is generated faster than it is spoken, and a user who talks over it has
heard only its beginning. A node that keeps a conversation (``VLLMChat``) must then
remember only what was heard, or its next answer refers to words the user never
heard. The transport that plays the audio knows how far it got; it hands a ``Heard``
(the reply's turn epoch and its heard text) to the session, which keeps the last few
in the session's ``meta`` under ``HEARD_KEY`` (the one dict every node of a session
shares; see nodes/turn.py for the same pattern). Any node reads them with
``heard()``; a chat node tags each reply with the turn it belongs to
(``reply_tag``) and calls ``cut_history`` before building its next prompt.

    history += [{"role": "user", ...}, {"role": "assistant", "content": reply, **reply_tag(epoch)}]
    cut_history(history)      # at the next call: interrupted replies keep their heard part
"""

from __future__ import annotations

from typing import Any

from chains.context import current_context
from chains.messages import Heard

HEARD_KEY = "chains.heard"
INSTRUCTIONS_KEY = "chains.instructions"  # a session's own system prompt (a Realtime client's)
ADDED_KEY = "chains.added"  # messages a client added to the conversation, for the next turn
KEEP = 16  # Heard messages a session keeps (one per interrupted turn; old ones are spent)
EPOCH = "epoch"  # the key of a history entry's turn epoch
INTERRUPTED = "interrupted"  # set on a reply cut to what was heard
MARK = " [interrupted by the user]"  # what the model reads at the end of a cut reply


def record(meta: dict[str, Any], msg: Heard) -> None:
    """The runtime's side: keep ``msg`` where the session's nodes will find it."""
    kept: list[Heard] = meta.setdefault(HEARD_KEY, [])
    others = [h for h in kept if h.epoch != msg.epoch]
    kept[:] = [*others[-(KEEP - 1) :], msg]


def heard(meta: dict[str, Any] | None = None) -> list[Heard]:
    """The ``Heard`` messages of the current session (of ``meta`` when given)."""
    if meta is None:
        ctx = current_context()
        if ctx is None:
            return []
        meta = ctx.meta
    return list(meta.get(HEARD_KEY, ()))


def current_epoch() -> int | None:
    """The turn epoch of the node call in progress (None outside a runtime)."""
    ctx = current_context()
    return None if ctx is None else ctx.epoch


def reply_tag(epoch: int | None) -> dict[str, Any]:
    """The extra key a history entry carries so that a later ``Heard`` can find it."""
    return {} if epoch is None else {EPOCH: epoch}


def begin_turn(history: list[dict[str, Any]]) -> int | None:
    """A chat node's first step of a call: cut the replies the user interrupted to what
    they heard, and give the epoch to tag this call's reply with (``reply_tag``)."""
    cut_history(history)
    ctx = current_context()
    added = ctx.meta.pop(ADDED_KEY, None) if ctx is not None else None
    if added:  # what a client put in the conversation since (a Realtime `conversation.item.create`)
        history += [{"role": str(m["role"]), "content": str(m["content"])} for m in added]
    return current_epoch()


def add_message(meta: dict[str, Any], role: str, content: str) -> None:
    """The transport's side: a message the client added to the conversation; a chat
    node puts it in its history at its next turn (``begin_turn``)."""
    meta.setdefault(ADDED_KEY, []).append({"role": role, "content": content})


def system_prompt(default: str) -> str:
    """The system prompt for the current session: the instructions its client gave
    (``meta[INSTRUCTIONS_KEY]``, e.g. a Realtime ``session.update``), else ``default``."""
    ctx = current_context()
    given = None if ctx is None else ctx.meta.get(INSTRUCTIONS_KEY)
    return given if isinstance(given, str) and given else default


def _norm(text: str) -> str:
    return " ".join(text.split())


def cut_history(history: list[dict[str, Any]], messages: list[Heard] | None = None) -> int:
    """Cut each tagged assistant reply that a ``Heard`` says was interrupted to its heard
    text, marked (``MARK``, ``interrupted: True``); a reply nobody heard goes, with the
    user message it answered. Returns how many entries changed. Idempotent: a cut entry
    loses its tag. A Heard that covers the whole reply changes nothing."""
    by_epoch = {h.epoch: h for h in (heard() if messages is None else messages)}
    if not by_epoch:
        return 0
    changed = 0
    i = 0
    while i < len(history):
        entry = history[i]
        tag = entry.get(EPOCH)
        h = by_epoch.get(tag) if isinstance(tag, int) and entry.get("role") == "assistant" else None
        if h is None:
            i += 1
            continue
        del entry[EPOCH]
        said, kept = _norm(str(entry.get("content", ""))), _norm(h.text)
        if kept and said.startswith(kept) and len(kept) >= len(said):
            i += 1
            continue  # all of it was heard
        changed += 1
        if not kept:
            drop_user = i > 0 and history[i - 1].get("role") == "user"
            del history[i - 1 if drop_user else i : i + 1]
            i -= 1 if drop_user else 0
            continue
        entry["content"] = kept + MARK
        entry[INTERRUPTED] = True
        i += 1
    return changed


__all__ = [
    "ADDED_KEY",
    "HEARD_KEY",
    "INSTRUCTIONS_KEY",
    "INTERRUPTED",
    "MARK",
    "add_message",
    "begin_turn",
    "current_epoch",
    "cut_history",
    "heard",
    "record",
    "reply_tag",
    "system_prompt",
]
