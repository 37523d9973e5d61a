"""The Ray backend: shared stages on Ray actors, our own link for the data.

    chains run demos/enrich.py --ray auto          # a cluster started with `ray start --head`
    async with chains.running(chain, ray="auto"):  # the same from Python

Ray places, starts and restarts the replicas; the runtime keeps the sessions and
the streaming data path. Each replica of a node that goes to the cluster is one
Ray actor (``NodeActor``) that loads the chain file, hosts that one node's stage
(``transport.remote.host``) on its node's address and an ephemeral port, and
reports its URL; the driver's replica set gets one stub per actor, linked over
our multiplexed websocket (credits, epochs, deadlines: an item costs a frame,
not a Ray task).

A chain defined in the ``__main__`` of a script run with ``python script.py`` is sent
to its actors by value (cloudpickle, as Ray ships ``__main__`` functions): they
never re-run the script, so it needs no main guard. Any other chain file is loaded
by path in each actor.

Which nodes go: those with ``placement="ray"``, and every shared stage (maps,
batched maps, streaming maps) unless ``placement="local"``. Per-session stream
nodes (VAD, sentence splitting) stay in the session's process.

Resources: a node's ``cpu``/``gpu``/``resources`` become the actor's
``num_cpus``/``num_gpus``/``resources`` (``device="cuda"`` without ``gpu`` asks
for one GPU); replicas of one stage are spread over nodes (``SPREAD``). The
actor's ``CHAINS_GPU_SHARE`` environment variable carries the GPU share for an
engine that must size its memory to it.

Supervision: actors have ``max_restarts`` (the node's, -1 unlimited). When one
dies its link drops: calls in flight on it fail as ``replica_lost`` (the stage
retries them on another replica while the deadline allows), the replica set
takes it out and asks this provider again; the provider asks the actor (Ray
restarts it) for its new URL and relinks, with backoff.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import ray
from anyio.abc import TaskStatus
from ray import cloudpickle  # Ray's own (it ships __main__ functions with it)
from ray.exceptions import RayActorError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from chains.errors import ChainError, ModelError
from chains.graph import Graph
from chains.spec import NodeSpec, Shape
from runtime.placement import Placed, Placement, ProviderFactory
from transport.remote.stubs import LinkProvider, Stub

RELINK_WITHIN_S = 60.0  # a restarted actor must be linked again within this
START_TIMEOUT_S = float(os.environ.get("CHAINS_RAY_START_TIMEOUT_S", "300"))  # placement + model load
PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CHAINS_HOME", "CHAINS_LOG_LEVEL", "CHAINS_TOKEN")


# --- the actor -------------------------------------------------------------------------------
class NodeActor:
    """One replica of one node on the cluster: a host for the node's stage, run by an event
    loop in a thread of the actor's process for the actor's life (a restart is a new one)."""

    def __init__(self, target: str, node: str, cwd: str | None = None, by_value: bytes | None = None):
        if cwd and Path(cwd).is_dir():
            os.chdir(cwd)  # relative paths in the chain file mean what they mean to the driver
        self.node = node
        self._url: str | None = None
        self._error: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=asyncio.run,
            args=(self._host(target, node, ready, by_value),),
            name=f"host:{node}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error

    async def _host(self, target: str, node: str, ready: threading.Event, by_value: bytes | None) -> None:
        from chains.loader import load_chain
        from transport.remote.host import hosting

        try:
            # A chain from a script's __main__ comes by value: re-importing the script here
            # would run its top-level code (start a cluster, call the chain) in the actor.
            chain = cloudpickle.loads(by_value) if by_value is not None else load_chain(target)
            ip = ray.util.get_node_ip_address()
            token = os.environ.get("CHAINS_TOKEN")  # the driver's, for the host's /metrics
            async with hosting(chain, node, host=ip, port=0, token=token, replicas=1) as (_, url):
                self._url = url
                ready.set()
                await anyio.sleep_forever()
        except BaseException as e:
            self._error = e
            ready.set()
            raise

    def url(self) -> str:
        assert self._url is not None
        return self._url

    def where(self) -> dict[str, Any]:
        """Which cluster node and process host this replica (tests check placement)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "url": self._url}


_RemoteNodeActor: Any = None


def _actor_class() -> Any:
    global _RemoteNodeActor
    if _RemoteNodeActor is None:
        _RemoteNodeActor = ray.remote(NodeActor)
    return _RemoteNodeActor


def actor_options(spec: NodeSpec, replicas: int) -> dict[str, Any]:
    """Ray actor options from a node's options: its resources, restarts and spreading."""
    opts = spec.options
    gpu = opts.gpu if opts.gpu is not None else (1.0 if opts.device == "cuda" else 0.0)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("CHAINS_TEST_")})
    if gpu:
        env["CHAINS_GPU_SHARE"] = str(gpu)
    out: dict[str, Any] = {
        "num_cpus": opts.cpu if opts.cpu is not None else 0,
        "num_gpus": gpu,
        "max_restarts": opts.max_restarts,
        "max_task_retries": -1,  # url() waits out a restart instead of failing
        "runtime_env": {"env_vars": env},
    }
    if opts.resources:
        out["resources"] = dict(opts.resources)
    if replicas > 1:
        out["scheduling_strategy"] = "SPREAD"
    return out


# --- the driver's side ---------------------------------------------------------------------------
class RayProvider(LinkProvider):
    """Replicas of one node as Ray actors; replica ``rid`` keeps its actor across restarts."""

    def __init__(
        self,
        spec: NodeSpec,
        template: Any = None,
        *,
        target: str,
        cwd: str | None = None,
        by_value: bytes | None = None,
    ):
        super().__init__(spec, template)
        self.target = target
        self.cwd = cwd
        self.by_value = by_value
        opts = spec.options
        self.options = actor_options(spec, max(opts.replicas, opts.max_replicas or 1))
        self.actors: dict[int, Any] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            actors, self.actors = self.actors, {}
            for actor in actors.values():  # the runtime is closing: its actors go with it
                ray.kill(actor, no_restart=True)

    async def url_for(self, rid: int) -> str:
        """The URL of replica ``rid``'s actor (created on first use). A restarting actor
        answers once it is back; one that cannot be placed fails after a while, naming
        what it asked for."""
        actor = self.actors.get(rid)
        if actor is None:
            actor = self.actors[rid] = (
                _actor_class().options(**self.options).remote(self.target, self.node, self.cwd, self.by_value)
            )
        try:
            with anyio.fail_after(START_TIMEOUT_S):
                return await actor.url.remote()
        except TimeoutError:
            self.actors.pop(rid, None)
            ray.kill(actor, no_restart=True)
            asked = {k: self.options.get(k) for k in ("num_cpus", "num_gpus", "resources")}
            raise ModelError(
                f"node {self.node!r}: replica {rid}'s actor did not start within {START_TIMEOUT_S:.0f} s "
                f"(it asks for {asked}: does the cluster have them free?)"
            ) from None
        except RayActorError as e:
            self.actors.pop(rid, None)  # out of restarts: a new actor next time
            raise ModelError(f"node {self.node!r}: replica {rid}'s actor died: {e}") from None

    async def start(self, rid: int) -> Stub:
        """Ask the actor for its URL and link to it, again with backoff while a restarted
        actor comes back (its old URL is gone, its new one not yet up)."""
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.05, min=0.05, max=2.0),
            stop=stop_after_delay(RELINK_WITHIN_S),
            retry=retry_if_exception_type(_NotLinked),
            reraise=True,
        ):
            with attempt:
                url = await self.url_for(rid)
                try:
                    return await self.link(url, rid)
                except ModelError as e:
                    raise _NotLinked(str(e)) from None
        raise AssertionError("unreachable: tenacity reraises")


class _NotLinked(ModelError):
    """The actor answered but its host did not take the link (yet): try again."""


def on_ray(spec: NodeSpec) -> bool:
    """Does this node go to the cluster? Shared stages by default; stream nodes stay."""
    placement = spec.options.placement
    if placement is not None:
        return placement == "ray"
    return spec.shape is not Shape.STREAM


def chain_target(chain: Any) -> str:
    """``FILE:CHAIN`` an actor loads to find the chain (its definition's file)."""
    fn = getattr(chain, "fn", None)
    try:
        file = inspect.getsourcefile(fn) if fn is not None else None
    except TypeError:
        file = None
    if file is None:
        raise ChainError(
            f"chain {chain.name!r}: cannot tell which file defines it; pass target='FILE:CHAIN'"
        )
    return f"{Path(file).resolve()}:{chain.name}"


def ray_placement(chain: Any, target: str | None = None) -> Placement:
    """The cluster-bound nodes of ``chain`` (see the module doc) served by Ray actors, one
    per replica; each keeps its node's own options (autoscaling bounds, router)."""
    if target is None:
        target = chain_target(chain)
    else:
        file, _, name = target.partition(":")
        target = f"{Path(file).resolve()}:{name or chain.name}"
    graph: Graph = chain.graph
    make = functools.partial(RayProvider, target=target, cwd=os.getcwd(), by_value=_by_value(chain))
    providers: dict[str, ProviderFactory] = {n.name: make for n in graph.nodes if on_ray(n.spec)}
    if not providers:
        raise ChainError(
            f"chain {graph.name!r}: no node goes to Ray (all are stream nodes or placement='local')"
        )
    return Placement(providers, where="ray")


def _by_value(chain: Any) -> bytes | None:
    """The chain pickled by value when a script's ``__main__`` defines it (as Ray ships
    functions defined in ``__main__``), so its actors need no ``if __name__ == "__main__"``
    guard; None for a chain in an importable file (actors load it by path)."""
    fn = getattr(chain, "fn", None)
    if getattr(fn, "__module__", None) != "__main__":
        return None
    try:
        return cloudpickle.dumps(chain)
    except Exception as e:
        raise ChainError(
            f"chain {chain.name!r} is defined in the script being run and cannot be sent to "
            f"the cluster by value ({type(e).__name__}: {e}); move it to a module, or put the "
            'code that runs it under `if __name__ == "__main__":` and pass target="FILE:CHAIN"'
        ) from e


def with_ray(chain: Any, target: str | None = None) -> Placed:
    """``chain`` with its cluster-bound nodes on Ray actors, for ``Runtime(...)``. Ray must
    be initialised (``connect``); the actors start with the runtime. Nodes already
    placed elsewhere (``--remote``) stay there."""
    inner = chain.chain if isinstance(chain, Placed) else chain
    placement = ray_placement(inner, target)
    if isinstance(chain, Placed):
        for node in chain.placement.providers:
            placement.providers.pop(node, None)
    return Placed(chain, placement)


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"host:6379"``) unless already joined."""
    if ray.is_initialized():
        return
    ray.init(address=address, namespace="chains", log_to_driver=False, configure_logging=False)


__all__ = [
    "NodeActor",
    "RayProvider",
    "actor_options",
    "chain_target",
    "connect",
    "on_ray",
    "ray_placement",
    "with_ray",
]
