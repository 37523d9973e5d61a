"""Transport: how sessions reach a chain from outside the process.

- ``protocol``: the client protocol's messages (msgspec Structs, JSON tagged by ``type``)
- ``server``: the websocket server (one websocket = one session) with plain HTTP on the
  same port (the browser page, ``/metrics``, ``/healthz``); ``connection`` serves one
  websocket; ``outputs`` maps chain outputs to messages
- ``client``: ``chains.Client`` and the ``chains client`` command
- ``audio``: PCM16 checks, wav files, resampling (standard library only)
- ``remote``: remote stages (``chains serve FILE --only NODE``) over one multiplexed
  websocket with msgpack envelopes and credit-based flow control

In-process edges live in ``runtime.channels``; this package only moves items across
sockets and drives sessions through the runtime's public session API.
"""
