"""chains: streaming compound-AI pipelines.

Decorate functions and classes with ``@chains.node``, wire them in a
``@chains.chain`` function, and run them with ``chains.call``, ``chains.stream``
or ``chains run FILE``. The README (the package's description) tells the model;
``help()`` on any name here, or the API reference (``make docs``), the details.
"""

from chains.api import call, running, stream
from chains.builtins import collect, merge, zip
from chains.context import NodeContext, context
from chains.errors import (
    AudioError,
    ChainError,
    ChainsError,
    DefinitionError,
    LockError,
    ModelError,
    NodeError,
    NoReplica,
    Overloaded,
    ReplicaLost,
    WrongResultType,
)
from chains.messages import (
    AudioFrame,
    ConfirmTurn,
    Control,
    Embedding,
    EndOfTurn,
    Entities,
    Entity,
    ErrorEvent,
    Heard,
    Interrupt,
    Message,
    SpeculativeTurn,
    SpeechStarted,
    Spoken,
    Text,
    TextDelta,
    ToolCall,
    ToolResult,
    Utterance,
    WordTiming,
)
from chains.models import ModelRef
from chains.node import Chain, NodeClass, NodeDef, NodeTemplate, chain, node
from chains.outputs import Output
from chains.spec import Batch
from chains.streams import Stream
from chains.sync import call_sync

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``chains.Runtime``, ``chains.Session``, ``chains.Output``, ``chains.Client`` and
    ``chains.serve``: the runtime's and the transport's public faces, imported on first
    use (those layers themselves import this vocabulary)."""
    if name in ("Runtime", "Session"):
        import runtime

        return getattr(runtime, name)
    if name == "Client":
        from transport.client import Client

        return Client
    if name == "serve":
        from transport.server import serve

        return serve
    raise AttributeError(f"module 'chains' has no attribute {name!r}")


__all__ = [
    "AudioError",
    "AudioFrame",
    "Batch",
    "Chain",
    "ChainError",
    "ChainsError",
    "ConfirmTurn",
    "Control",
    "DefinitionError",
    "Embedding",
    "EndOfTurn",
    "Entities",
    "Entity",
    "ErrorEvent",
    "Heard",
    "Interrupt",
    "LockError",
    "Message",
    "ModelError",
    "ModelRef",
    "NoReplica",
    "NodeClass",
    "NodeContext",
    "NodeDef",
    "NodeError",
    "NodeTemplate",
    "Output",
    "Overloaded",
    "ReplicaLost",
    "Runtime",
    "Session",
    "SpeculativeTurn",
    "SpeechStarted",
    "Spoken",
    "Stream",
    "Text",
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "Utterance",
    "WordTiming",
    "WrongResultType",
    "call",
    "call_sync",
    "chain",
    "collect",
    "context",
    "merge",
    "node",
    "running",
    "stream",
    "zip",
]
