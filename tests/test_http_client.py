"""`chains client http://...`: a request/response chain over HTTP from a file, its
outputs printed as they stream (token deltas on one line), a server error printed
with its status and the node, exit code 1."""

from __future__ import annotations

import io
import json
from pathlib import Path

import anyio
import pytest

from chains.cli import main
from tests.test_http_chains import CHAINS
from transport.httpclient import run_http_client
from transport.server import serve

pytestmark = pytest.mark.anyio


async def client(*args: object, **kw: object) -> tuple[int, str]:
    out = io.StringIO()
    code = await anyio.to_thread.run_sync(lambda: run_http_client(*args, out=out, **kw))  # type: ignore[arg-type]
    return code, out.getvalue()


async def test_text_and_json_files_and_errors(tmp_path: Path):
    doc = tmp_path / "doc.txt"
    doc.write_text("hello big world")
    body = tmp_path / "in.json"
    body.write_text(json.dumps({"a": 2, "b": 3}))
    boom = tmp_path / "boom.txt"
    boom.write_text("boom")
    async with serve(CHAINS, port=0) as srv:
        code, text = await client(srv.http_url, doc, chain="shout")
        assert code == 0 and text.splitlines() == ['loud: {"text": "HELLO BIG WORLD"}', "words: 3"]
        code, text = await client(f"{srv.http_url}v1/chains/adder", body)
        assert code == 0 and text.splitlines() == ["output: 5"]
        code, text = await client(srv.http_url, doc, chain="tokens")
        assert code == 0 and "reply: hellobigworld" in text.splitlines() and "count: 3" in text
        code, text = await client(srv.http_url, boom, chain="shout")
        assert code == 1 and "error (node 'upper'): node 'upper' failed" in text
        code, text = await client(srv.http_url, doc, chain="nope")
        assert code == 1 and text.startswith("error (404): no chain 'nope'")


async def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    doc = tmp_path / "doc.txt"
    doc.write_text("one two")
    async with serve({"shout": CHAINS["shout"]}, port=0) as srv:
        # no --chain: the server's only chain
        with pytest.raises(SystemExit) as e:
            await anyio.to_thread.run_sync(lambda: main(["client", srv.http_url, "--input", str(doc)]))
        assert e.value.code in (0, None)
    assert "words: 2" in capsys.readouterr().out
