"""The ``chains`` command (also ``python -m chains``).

Every failure the user can cause (a bad file, a bad chain, a lock mismatch, a
refused connection) prints one line naming it and exits non-zero; a traceback
means a bug in chains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TextIO

from chains import loop as serving_loop
from chains.errors import ChainsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chains", description="Run streaming compound-AI chains.")
    p.add_argument("--log-json", action="store_true", help="log JSON lines (or CHAINS_LOG_JSON=1)")
    p.add_argument("--log-level", default=None, help="warning (default), info, debug")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the model engines' logs on the terminal instead of in the log file",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="serve a chain, or run one session from a file")
    r.add_argument("target", metavar="FILE[:CHAIN]")
    r.add_argument("--input", type=Path, help="run one session on this file and exit")
    r.add_argument("--output", type=Path, help="write the audio output here (wav)")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8765)
    r.add_argument(
        "--token", default=os.environ.get("CHAINS_TOKEN"), help="require this token (or CHAINS_TOKEN)"
    )
    r.add_argument("--max-sessions", type=int, default=64)
    r.add_argument(
        "--remote",
        action="append",
        default=[],
        metavar="NODE=URL",
        help="reach NODE's stage at a `chains serve --only NODE` process",
    )
    r.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="run the shared stages on a Ray cluster (default address: auto); needs chains[ray]",
    )
    r.add_argument("--no-verify", action="store_true", help="skip checking chains.lock")

    s = sub.add_parser("serve", help="host one node's stage for other processes (--only NODE)")
    s.add_argument("target", metavar="FILE[:CHAIN]")
    s.add_argument("--only", required=True, metavar="NODE")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument(
        "--token", default=os.environ.get("CHAINS_TOKEN"), help="require this token for /metrics"
    )

    g = sub.add_parser("graph", help="print the chain's DAG as Mermaid text")
    g.add_argument("target", metavar="FILE[:CHAIN]")

    lk = sub.add_parser(
        "lock", help="write chains.lock (or --check it); no FILE: every chain the lock names"
    )
    lk.add_argument("targets", nargs="*", metavar="FILE[:CHAIN]")
    lk.add_argument("--check", action="store_true", help="exit 1 if chains.lock does not match")
    lk.add_argument("--lock", type=Path, default=Path("chains.lock"))

    c = sub.add_parser("client", help="talk to a chains server from a file (ws:// session, or http://)")
    c.add_argument("url", help="ws://HOST:PORT (a session) or http://HOST:PORT[/v1/chains/NAME] (a request)")
    c.add_argument("--input", type=Path, required=True)
    c.add_argument("--output", type=Path)
    c.add_argument("--fast", action="store_true", help="send audio as fast as possible, not in real time")
    c.add_argument("--token", default=os.environ.get("CHAINS_TOKEN"))
    c.add_argument("--chain", help="the chain to call (default: the server's only one)")

    b = sub.add_parser("bench", help="run a benchmark: overhead, batching, transport, voice, lockhash")
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _lock_path_for(target: str) -> Path | None:
    """The chains.lock at the project root of a chain file, if any."""
    start = Path(target.partition(":")[0]).resolve().parent
    for d in (start, *start.parents):
        cand = d / "chains.lock"
        if cand.exists():
            return cand
        if (d / "pyproject.toml").exists():
            break
    cwd = Path.cwd() / "chains.lock"
    return cwd if cwd.exists() else None


def _verify(chain: object, target: str) -> None:
    path = _lock_path_for(target)
    if path is None:
        return
    from chains.lock import check_lock, format_differences, lock_has_chain

    if not lock_has_chain(path, chain):
        return
    diffs = check_lock([chain], path)
    if diffs:
        raise ChainsError(
            f"{path} does not match (run `chains lock` to update, or --no-verify):\n"
            + format_differences(diffs)
        )


def _cmd_run(args: argparse.Namespace) -> int:
    if args.input is not None and not args.verbose:
        from chains.enginelogs import engine_logs_to

        # One session from a file: the user reads the transcript, the reply and the
        # figures; the engines' logs (vLLM, torch, ...) go to a file, -v shows them.
        with engine_logs_to() as console:
            print(f"engine logs: {console.log_path} (-v shows them here)", file=console.out)
            return _run(args, console.out, console.err)
    return _run(args, sys.stdout, sys.stderr)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from chains.loader import load_chain

    chain = load_chain(args.target)
    if not args.no_verify:
        _verify(chain, args.target)
    if args.ray is not None:
        try:
            from transport.remote.ray import connect, with_ray
        except ModuleNotFoundError as e:
            raise ChainsError(f"--ray needs Ray ({e}): pip install 'chains[ray]'") from None
        connect(args.ray)
        chain = with_ray(chain, target=args.target)
    if args.input is not None:
        from chains.filemode import run_file

        return asyncio.run(run_file(chain, args.input, args.output, out=out, err=err))
    from transport.server import serve_forever

    remotes = {}
    for spec in args.remote:
        node, sep, url = spec.partition("=")
        if not sep:
            raise ChainsError(f"--remote wants NODE=URL, got {spec!r}")
        remotes[node] = url
    serving_loop.run(
        serve_forever(
            chain,
            host=args.host,
            port=args.port,
            token=args.token,
            max_sessions=args.max_sessions,
            remotes=remotes,
        )
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from chains.loader import load_chain
    from transport.remote import serve_node

    chain = load_chain(args.target)
    serving_loop.run(serve_node(chain, args.only, args.host, args.port, token=args.token))
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from chains.loader import load_chain

    sys.stdout.write(load_chain(args.target).graph.mermaid())
    return 0


def _cmd_lock(args: argparse.Namespace) -> int:
    from chains.loader import load_chain
    from chains.lock import check_lock, format_differences, locked_targets, write_lock

    if not args.lock.exists() and (args.check or not args.targets):
        raise ChainsError(f"{args.lock} does not exist: run `chains lock FILE...` first")
    targets = args.targets or locked_targets(args.lock)
    chains_ = [load_chain(t) for t in targets]
    if args.check:
        diffs = check_lock(chains_, args.lock)
        if diffs:
            print(f"{args.lock} does not match:\n{format_differences(diffs)}", file=sys.stderr)
            return 1
        print(f"{args.lock} matches ({len(chains_)} chain(s))")
        return 0
    write_lock(chains_, args.lock)
    print(f"wrote {args.lock} ({len(chains_)} chain(s))")
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    if args.url.startswith(("http://", "https://")):  # request/response over HTTP
        from transport.httpclient import run_http_client

        return run_http_client(args.url, args.input, chain=args.chain, token=args.token)
    from transport.client import run_client

    run = run_client(args.url, args.input, args.output, fast=args.fast, token=args.token, chain=args.chain)
    return asyncio.run(run) or 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    script = root / f"{args.name}.py"
    if not script.exists():
        names = sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))
        raise ChainsError(f"no benchmark {args.name!r}; there are: {', '.join(names)}")
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


_USER_ERRORS = (ChainsError, OSError, TypeError, ValueError)


def _user_errors(e: BaseException) -> list[BaseException] | None:
    """The user-caused errors inside ``e`` (task groups wrap them), or None for a bug."""
    if isinstance(e, BaseExceptionGroup):
        found: list[BaseException] = []
        for sub in e.exceptions:
            inner = _user_errors(sub)
            if inner is None:
                return None
            found.extend(inner)
        return found
    return [e] if isinstance(e, _USER_ERRORS) else None


COMMANDS = {
    "run": _cmd_run,
    "serve": _cmd_serve,
    "graph": _cmd_graph,
    "lock": _cmd_lock,
    "client": _cmd_client,
    "bench": _cmd_bench,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.verbose:  # the engines' own output on the terminal (chains/enginelogs.py)
        os.environ.setdefault("CHAINS_ENGINE_LOGS", "terminal")
    from runtime.logs import configure

    configure(json=True if args.log_json else None, level=args.log_level)
    try:
        code = COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        code = 130
    except BaseException as e:
        user = _user_errors(e)
        if user is None:
            raise
        for err in user:
            print(f"chains: error: {str(err) or type(err).__name__}", file=sys.stderr)
        code = 2
    sys.exit(code)
