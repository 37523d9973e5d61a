"""The runtime: runs a compiled chain for many live sessions at once.

Layers: ``envelope`` (what travels on an edge), ``channels`` (bounded edges with a
no-round-trip fast path), ``limiter`` (deadline-ordered concurrency), ``costmodel``
and ``batcher`` (deadline-aware batching), ``stage`` (one shared worker set per
node), ``session`` (one client's tasks and channels), ``engine`` (the owner of
stages and sessions), ``metrics`` and ``logs``.
"""

from chains.outputs import Output
from runtime.engine import Runtime, active_runtime
from runtime.session import Session

__all__ = ["Output", "Runtime", "Session", "active_runtime"]
