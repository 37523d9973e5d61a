"""Test harness: the public test kit's pytest plugin (``chains.testing.pytest_plugin``)
runs every async test on anyio (asyncio backend) under the leak check.

Why a leak check: a session promises that nothing it started outlives it
(DESIGN.md, "Session"). So any asyncio task still alive when an async test ends,
besides the test's own, fails that test; so does a thread it started that is still
running (an idle pooled anyio worker thread is not a leak, a busy one is: a sync
node call the runtime walked away from).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Local Ray clusters (tests/ray_fixtures.py) bind 127.0.0.1 on every node, not the
# machine's own address: load and cluster tests talk to loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

pytest_plugins = ["chains.testing.pytest_plugin"]
