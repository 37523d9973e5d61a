"""Model housekeeping from the command line.

    python -m nodes prepare                     # build every prepared default model now
    python -m nodes speak TEXT OUT.wav [RATE]   # Piper to a wav file (16000 for demos/assets)

``demos/assets/question.wav`` was made with
``python -m nodes speak "What is the capital of France?" demos/assets/question.wav 16000``.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["prepare"]:
        from nodes.resolve import main as prepare

        prepare()
        return 0
    if argv[:1] == ["speak"] and len(argv) in (3, 4):
        from nodes.tts import PiperTTS

        PiperTTS.spec.impl().write_wav(argv[1], argv[2], int(argv[3]) if len(argv) == 4 else None)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
