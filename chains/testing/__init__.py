"""chains.testing: test your chains the way chains tests itself.

- **Fakes with scripted timing** (``chains.testing.fakes``): ``MapFake``,
  ``BatchFake`` (a batch of b items costs ``a + k*b`` s), ``StreamingFake`` (an
  LLM-like token stream), ``ProducerFake``, ``InterrupterFake`` and ``ModelFake``
  (a class node with replicas) build real ``@chains.node``s and record what the
  runtime made them do; ``Gate`` holds calls until the test lets them through.
- **Helpers**: ``wait_until`` (a hang guard, not a speed assertion), ``settle``,
  ``steady``, ``drain``, ``InFlight``, ``session_tag``.
- **The leak check** (``chains.testing.leaks``): ``LeakCheck`` fails when a task or
  a busy worker thread outlives the code under test.
- **A pytest plugin** (``chains.testing.pytest_plugin``): async tests on anyio, each
  under the leak check. In ``conftest.py``: ``pytest_plugins = ["chains.testing.pytest_plugin"]``.

Importing this package does not start or import the runtime; the leak check
imports it when it runs.
"""

from chains.testing.fakes import (
    BatchFake,
    Call,
    Gate,
    InFlight,
    InterrupterFake,
    MapFake,
    ModelFake,
    ProducerFake,
    StreamingFake,
    drain,
    session_tag,
    settle,
    steady,
    wait_until,
)
from chains.testing.leaks import LeakCheck, LeakError, find_leaks

__all__ = [
    "BatchFake",
    "Call",
    "Gate",
    "InFlight",
    "InterrupterFake",
    "LeakCheck",
    "LeakError",
    "MapFake",
    "ModelFake",
    "ProducerFake",
    "StreamingFake",
    "drain",
    "find_leaks",
    "session_tag",
    "settle",
    "steady",
    "wait_until",
]
