"""A tiny chain for the lock tests: a class node whose "model" is two small files
(named by ``chains_models``, never loaded) and a function node.

The tests copy this file into a temporary folder, edit it, and import it again, the
way a user edits a node and reruns. The model folder comes from
``CHAINS_LOCK_TEST_MODELS``.
"""

from __future__ import annotations

import os

import msgspec

import chains
from chains import ModelRef, Text

MODEL_DIR = os.environ.get("CHAINS_LOCK_TEST_MODELS", "/nonexistent")
BATCH = 4
LOADS: list[str] = []  # Tagger.__init__ appends here: tests assert verification loads nothing


@chains.node(batch=chains.Batch(max_size=BATCH, max_wait_ms=5))
class Tagger:
    def __init__(self, model_dir: str):
        LOADS.append(model_dir)
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = msgspec.json.decode(f.read())

    @classmethod
    def chains_models(cls, model_dir: str) -> list[ModelRef]:
        names = ("weights.bin", "config.json")
        return [
            ModelRef(
                name="fake-tagger",
                package="fake-models",
                version="1.0",
                paths=[os.path.join(model_dir, n) for n in names],
            )
        ]

    def __call__(self, docs: list[Text]) -> list[Text]:
        return [Text(text=d.text.upper()) for d in docs]


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text + "!")


@chains.chain(budget_ms=500)
def tagged(doc: Text):
    return shout(Tagger(MODEL_DIR)(doc))
