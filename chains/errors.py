"""Errors a user of chains can catch, each naming what went wrong and where."""

from __future__ import annotations


class ChainsError(Exception):
    """Base of every chains error."""


class DefinitionError(ChainsError):
    """A chain definition is invalid (raised while compiling it).

    Named apart from ``ChainsError`` (the base of every error here): the two used to
    differ by one letter."""

    def __init__(self, message: str, *, node: str | None = None, where: str | None = None):
        self.node = node
        self.where = where
        parts = []
        if where:
            parts.append(where)
        if node:
            parts.append(f"node {node!r}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


ChainError = DefinitionError
"""The old name of ``DefinitionError``, kept so existing ``except ChainError`` code works."""


class NodeError(ChainsError):
    """An item failed inside a node; other items and sessions go on."""

    def __init__(self, node: str, message: str, *, code: str = "node_error"):
        self.node = node
        self.code = code
        self.detail = message
        super().__init__(f"node {node!r} failed: {message}")


class ReplicaLost(NodeError):
    """The replica serving an item died (its engine process, its actor, its host).

    A node raises it when its model can no longer serve (an engine that is gone); the
    runtime raises it for items in flight on a replica that is lost. Either way the
    replica is taken out of service and rebuilt while the other replicas go on."""

    def __init__(self, node: str, message: str):
        super().__init__(node, message, code="replica_lost")


class WrongResultType(NodeError):
    """A node returned (or yielded) a value that is not of the type its annotation
    declares: caught where it was returned, not in the next node that trips on it."""

    def __init__(self, node: str, declared: str, actual: str):
        self.declared = declared
        self.actual = actual
        super().__init__(
            node, f"returned {actual}, but it is annotated to return {declared}", code="wrong_type"
        )


class NoReplica(NodeError):
    """No replica of the node is ready (all lost and being rebuilt, or still loading)."""

    def __init__(self, node: str, message: str):
        super().__init__(node, message, code="no_replica")


class Overloaded(ChainsError):
    """Admission refused: a session or queue limit is reached."""

    code = "overloaded"


class ModelError(ChainsError):
    """A model cannot be found, prepared or loaded."""


class AudioError(ChainsError, ValueError):
    """Audio that cannot be used (not a WAV file, an odd PCM16 byte count, an impossible
    sample rate); the message names the file or stream and the problem."""


class LockError(ChainsError):
    """chains.lock is malformed or does not match what is installed."""
