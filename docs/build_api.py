"""Build the API reference: pdoc over the public API of ``chains`` and ``nodes``.

    python docs/build_api.py [OUTPUT_DIR]     # `make docs`: out/api by default

Every warning is an error (an unresolvable name in ``__all__``, an annotation pdoc
cannot read, ...), so the reference CI builds is complete. The reference is built
from the docstrings: a decorated node shows its own signature (a class node's
constructor options), shape, types and options (chains/node.py).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out" / "api"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    warnings.simplefilter("error")
    import pdoc

    import chains

    # chains imports its runtime and transport faces on first use (they import chains);
    # pdoc reads the names of __all__ from the module's dict, so resolve them first.
    for name in ("Runtime", "Session"):
        vars(chains)[name] = getattr(chains, name)
    pdoc.render.configure(docformat="markdown", search=True, show_source=True)
    pdoc.pdoc("chains", "nodes", output_directory=out)
    print(f"API reference: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
