"""Where chains keeps what it prepares and caches: one definition for every layer.

``$CHAINS_HOME`` when set, else ``~/.cache/chains``; ``~`` is expanded and the path
made absolute and symlink-free, so the model cache (nodes), the hash cache and the
``{chains_home}`` prefix in chains.lock (chains/lock) all name the same folder
however the variable was spelled (``~/x``, ``./x``, a symlink).
"""

from __future__ import annotations

import os
from pathlib import Path


def chains_home() -> Path:
    """The chains home folder (it need not exist yet)."""
    raw = os.environ.get("CHAINS_HOME") or str(Path("~") / ".cache" / "chains")
    return Path(raw).expanduser().resolve()


__all__ = ["chains_home"]
