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

pytest_plugins = ["chains.testing.pytest_plugin"]
