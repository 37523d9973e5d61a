"""One ``chains_home()`` for the model cache, the hash cache and the lock's paths,
with ``~`` expanded (``CHAINS_HOME=~/x`` used to leave the lock's paths unmatched)."""

from pathlib import Path

import pytest

from chains.home import chains_home
from chains.lock.collect import portable_path
from chains.lock.hashing import HashCache


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_tilde_is_expanded_and_every_user_sees_the_same_folder(
    fake_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nodes.resolve

    monkeypatch.setenv("CHAINS_HOME", "~/x")
    assert chains_home() == (fake_home / "x").resolve()
    assert nodes.resolve.chains_home() == chains_home()
    assert HashCache().path == (fake_home / "x" / "hashcache.json").resolve()
    # a model prepared under the expanded home is stored portably in the lock
    model = str(fake_home / "x" / "whisper-base" / "model.bin")
    assert portable_path(model, tmp_path / "proj") == "{chains_home}/whisper-base/model.bin"


def test_default_is_under_the_user_cache(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAINS_HOME", raising=False)
    assert chains_home() == (fake_home / ".cache" / "chains").resolve()


def test_relative_and_symlinked_homes_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHAINS_HOME", "link")
    assert chains_home() == real.resolve()
    assert chains_home().is_absolute()
