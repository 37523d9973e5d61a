"""``chains client http://HOST:PORT --input FILE``: a request/response chain over HTTP.

The URL is the server (``--chain NAME`` picks the chain; without it the server's only
chain) or a chain's endpoint (``http://HOST:PORT/v1/chains/NAME``). The file is the
input: ``.json`` is sent as the body as it is (the inputs by name, or the bare value),
any other text file as one string (a ``Text`` input), and a ``.wav`` goes to
``/v1/audio/transcriptions``. Outputs stream back as NDJSON and are printed as they
come, one ``name: value`` line each (token deltas joined on one line). Exit code 0,
or 1 when the server answered an error (printed with its status).

The standard library's HTTP client is enough here: no dependency for a command.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from chains.errors import ChainsError

TIMEOUT_S = 300.0


def _request(url: str, data: bytes | None, headers: dict[str, str]) -> Any:
    req = urllib.request.Request(
        url, data=data, headers=headers, method="POST" if data is not None else "GET"
    )
    return urllib.request.urlopen(req, timeout=TIMEOUT_S)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _chain_url(url: str, chain: str | None, token: str | None) -> tuple[str, str]:
    """(the server's base URL, the chain's name)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if path.startswith("/v1/chains/"):
        return base, path.removeprefix("/v1/chains/")
    if chain:
        return base, chain
    with _request(base + "/v1/models", None, _headers(token)) as r:
        names = [m["id"] for m in json.load(r)["data"]]
    if len(names) != 1:
        raise ChainsError(f"the server has {len(names)} chains ({', '.join(names)}): pick one with --chain")
    return base, names[0]


def _multipart(fields: dict[str, str], name: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    out += content + f"\r\n--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def run_http_client(
    url: str,
    input_path: Path | str,
    *,
    chain: str | None = None,
    token: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Send ``input_path`` to the chain and print its outputs; the exit code."""
    out = out or sys.stdout
    path = Path(input_path)
    if not path.exists():
        raise ChainsError(f"--input: no such file: {path}")
    try:
        base, name = _chain_url(url, chain, token)
        headers = _headers(token)
        if path.suffix.lower() == ".wav":
            body, ctype = _multipart({"model": name}, "file", path.name, path.read_bytes())
            with _request(base + "/v1/audio/transcriptions", body, {**headers, "Content-Type": ctype}) as r:
                print(f"transcript: {json.load(r)['text']}", file=out, flush=True)
            return 0
        is_json = path.suffix.lower() == ".json"
        body = path.read_bytes() if is_json else json.dumps(path.read_text()).encode()
        headers.update({"Content-Type": "application/json", "Accept": "application/x-ndjson"})
        with _request(f"{base}/v1/chains/{name}", body, headers) as r:
            return _print_stream(r, out)
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        print(f"error ({e.code}): {message}", file=out, flush=True)
        return 1
    except urllib.error.URLError as e:
        raise ChainsError(f"cannot reach {url}: {e.reason}") from None


def _print_stream(lines: Any, out: TextIO) -> int:
    code = 0
    delta_open = False
    for raw in lines:
        if not raw.strip():
            continue
        item = json.loads(raw)
        if "error" in item:
            err = item["error"]
            node = f" (node {err['node']!r})" if err.get("node") else ""
            print(
                f"\nerror{node}: {err['message']}" if delta_open else f"error{node}: {err['message']}",
                file=out,
            )
            delta_open, code = False, 1
            continue
        if item.get("done"):
            break
        data = item["data"]
        if isinstance(data, dict) and set(data) <= {"text", "final"} and "final" in data:  # a token delta
            if not delta_open:
                print(f"{item['name']}: ", end="", file=out)
            print(data["text"], end="", file=out, flush=True)
            delta_open = not data["final"]
            if data["final"]:
                print(file=out)
            continue
        if delta_open:
            print(file=out)
            delta_open = False
        print(f"{item['name']}: {json.dumps(data)}", file=out, flush=True)
    if delta_open:
        print(file=out)
    return code


__all__ = ["run_http_client"]
