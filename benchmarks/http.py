"""Requests per second over HTTP: a chain endpoint against the floor of the same stack.

One server process (chains' own: Starlette on uvicorn, transport/server.py) serves

- ``chains``: ``POST /v1/chains/echo``, a one-node chain (an async map returning its
  ``Text``), one ``rt.call`` per request;
- ``chains_batched``: ``POST /v1/chains/lengths``, a one-node batched map (free
  compute: what batching costs us);
- ``floor``: ``POST /floor`` on the same app and server, reading and decoding the
  same body and answering the same JSON with no chain behind it.

Each is driven by ``wrk`` (Debian's package; a load generator that is not ours) at a
fixed concurrency (64 connections, 1 thread) for ``--duration`` seconds after a
warm-up. Targets (BENCHMARKS.md): chains ≥ 70% of the floor's requests/s, p99 ≤ 2x
the floor's.

    python benchmarks/http.py [--duration 10] [--json out/http.json] [--plot out/http.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "http":
    # Another script here imported the standard library's ``http`` (``python
    # benchmarks/X.py`` puts this folder first on sys.path) and found this file: give it
    # the real package, which the import system returns in place of this module.
    import importlib.util
    import sysconfig

    _std = Path(sysconfig.get_paths()["stdlib"]) / "http"
    _spec = importlib.util.spec_from_file_location(
        "http", _std / "__init__.py", submodule_search_locations=[str(_std)]
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _module
    _spec.loader.exec_module(_module)
elif __name__ == "__main__":
    _here = Path(__file__).resolve()
    # this folder first on sys.path would make this file the standard library's ``http``
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here.parent]
    sys.path.insert(0, str(_here.parents[1]))
    from benchmarks.httpbench import main

    main()
