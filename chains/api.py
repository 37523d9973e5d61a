"""Running a chain from Python: ``call``, ``stream`` and ``running``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runtime imports the vocabulary; import it back only when running
    from runtime.engine import Runtime
    from runtime.session import Output


async def call(chain: Any, *inputs: Any) -> Any:
    """Run one session of ``chain`` on ``inputs`` and return its outputs.

    The shape of the result follows the chain's declaration, never what happened to
    run: an output that is one value per input comes back as that value, an output
    that is a stream as a list of its items. An output is a stream when a stream
    chain input, a streaming map (an LLM's ``TextDelta``s) or a stream node is
    upstream of it, unless ``chains.collect`` joined it back into one value (a
    ``Text`` per reply, or a list) on a chain whose inputs are single values. The
    chain's single output comes back as its value, a tuple or dict of outputs as a
    tuple or dict. A failing node raises
    ``chains.NodeError``. Inside ``async with chains.running(chain)`` the call is a
    session of that runtime; otherwise of the chain's default runtime, started on
    first use and kept until the event loop ends (runtime/default.py). Either way
    concurrent calls share the models and batch together.
    """
    from runtime.default import default_runtime
    from runtime.engine import active_runtime

    rt = active_runtime(chain) or await default_runtime(chain)
    return await rt.call(*inputs)


def stream(chain: Any, *inputs: Any) -> AsyncIterator[Output]:
    """Outputs of one session as they are produced: ``Output(name, value, origin, epoch)``.

    Errors arrive as outputs named ``"error"`` carrying an ``ErrorEvent``; the
    session goes on. An input may be an async iterable (e.g. audio frames). Outside
    ``chains.running(chain)`` the session runs on the chain's default runtime.
    """
    from runtime.default import stream_outputs

    return stream_outputs(chain, inputs)


def running(chain: Any, *, ray: str | None = None, **options: Any) -> Runtime:
    """``async with chains.running(chain):`` serves ``chain`` for every call inside.

    ``ray=ADDRESS`` (``"auto"``, ``"127.0.0.1:6379"``) runs its shared stages on that Ray
    cluster, one actor per replica (needs ``pip install chains[ray]``); ``chains.call``
    and ``chains.stream`` on ``chain`` inside the block are served there."""
    from runtime.engine import Runtime

    if ray is not None:
        try:
            from transport.remote.ray import connect, with_ray
        except ModuleNotFoundError as e:
            from chains.errors import ChainsError

            raise ChainsError(f"running(ray=...) needs Ray ({e}): pip install 'chains[ray]'") from None
        connect(ray)
        return Runtime(with_ray(chain), **options)
    return Runtime(chain, **options)
