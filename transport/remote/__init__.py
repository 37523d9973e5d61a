"""Remote stages: a node of a chain served by another process, or by Ray actors.

    chains serve demos/voice.py --only VLLMChat --port 9001          # the node's process
    chains run demos/voice.py --remote VLLMChat=ws://gpu-box:9001    # the main process
    chains run demos/enrich.py --ray auto                            # shared stages on Ray

The pieces, one job each:

- ``wire``: the frames (msgpack, array-encoded msgspec Structs), the payload codec
  (type tags, never module paths) and the credit primitives that bound every call,
  input item and output item in flight;
- ``caller``: ``RemoteLink``, one websocket to one replica's host, multiplexed across
  every session;
- ``stubs``: the replicas the runtime gets for a remote node (stubs over links) and
  their ``RemoteProvider``; ``remote_placement`` / ``with_remotes`` place nodes on
  them (the chain's graph is unchanged: see runtime/placement.py);
- ``host`` / ``hostlink``: ``chains serve --only NODE``, one node's stage served to
  every caller through ``Stage.serve``;
- ``ray``: the Ray backend (``ray_placement``, ``with_ray``): one actor per replica hosts the node, the
  driver links to it; Ray places and restarts actors, our link carries the data.

Credits bound everything in flight: when the host is slow, the stub waits for a
credit, the runtime's bounded edges fill, and the producer slows down; no buffer
grows on either side.
"""

from transport.remote.caller import OUT_WINDOW, RemoteLink
from transport.remote.host import NodeHost, hosting, serve_node
from transport.remote.stubs import RemoteProvider, links_of, remote_placement, with_remotes

__all__ = [
    "OUT_WINDOW",
    "NodeHost",
    "RemoteLink",
    "RemoteProvider",
    "hosting",
    "links_of",
    "remote_placement",
    "serve_node",
    "with_remotes",
]
