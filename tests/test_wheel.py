"""The built wheel is complete: installed into a fresh virtual environment (not this
checkout, not the editable install), ``chains run`` serves the browser page at ``/``.

Fast and honest: the wheel is built from this tree without build isolation, and
installed with ``--no-deps`` into a new venv whose only view of the dependencies is
a ``.pth`` line naming the project venv's site-packages (a plain path: that folder's
own ``.pth`` files, the editable install's among them, are not run). The server runs
from an empty folder, so nothing of this checkout is importable.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN = """
import chains
from chains import Text


@chains.node
async def shout(t: Text) -> Text:
    return Text(text=t.text.upper())


@chains.chain
def loud(t: Text):
    return shout(t)
"""


# what vLLM's engine and worker processes do first: load the general plugins, the
# wheel's among them (nodes.spin: vLLM's queue readers spin 20 ms, not 1 s)
SPIN = (
    "from vllm.plugins import load_general_plugins; load_general_plugins(); "
    "from vllm.distributed.device_communicators.shm_broadcast import SpinCondition; "
    "import nodes.spin; print(nodes.spin.__file__); print(SpinCondition.__init__.__defaults__[-1])"
)


def test_the_installed_wheel_serves_the_browser_page(tmp_path: Path):
    dist = tmp_path / "dist"
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools would pack stale files left there
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = dist.glob("chains-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True, timeout=300
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "loud.py").write_text(CHAIN)
    where = subprocess.check_output(
        [py, "-c", "import transport.server as s; print(s.WEB_ROOT)"], cwd=work, text=True
    )
    assert Path(where.strip()).is_relative_to(site) and (Path(where.strip()) / "index.html").is_file()
    if importlib.util.find_spec("vllm") is not None:
        out = subprocess.run([py, "-c", SPIN], cwd=work, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        plugin_file, spin_s = out.stdout.strip().splitlines()[-2:]
        assert Path(plugin_file).is_relative_to(site) and spin_s == "0.02"
    proc = subprocess.Popen(
        [env_dir / "bin" / "chains", "run", "loud.py", "--port", "0"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 120
        while "ws://" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"chains run failed:\n{proc.stderr.read() if proc.stderr else ''}")
        port = line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and b"<title>chains" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/app.js", timeout=10) as r:
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chains/loud", data=b'"hi"', method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.read() == b'{"text":"HI"}'
    finally:
        proc.terminate()
        proc.wait(timeout=30)
