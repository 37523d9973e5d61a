"""The real voice chain (demos/voice.py) as the soak serves it: the same chain, plus
the census gauges on /metrics (benchmarks/census.py) that the leak gates read.

    python benchmarks/soak.py --chain benchmarks/soak_chains/realvoice.py --mode density --levels 1,2,4

Why this folder: ``chains run`` puts a chain file's folder first on ``sys.path``,
and benchmarks/ holds a ``transport.py`` that would shadow the transport package.
"""

from __future__ import annotations

from benchmarks import census
from demos.voice import voice

census.register()

__all__ = ["voice"]
