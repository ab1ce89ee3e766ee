"""backchannel: the only way between shardnet processes (a leaf package: it imports nothing else of ours).

messages.py  every wire message, typed, with its TAG, in one registry; the wire vocabulary of their fields
shapes.py    the grammar of wire shapes (ranges, enums, fixed and tagged tuples) the codec compiles
codec.py     msgpack encode/decode through that registry; DecodeError and the counting Decoder
guard.py     the loop guard: what handling one message raises is counted, logged, and the loop goes on
sockets.py   ZeroMQ socket creation (import it explicitly: ``from backchannel import sockets``)
"""

from backchannel.codec import DecodeError, Decoder, EncodeError, decode, decode_many, encode, encode_many
from backchannel.messages import (
    REGISTRY,
    ArpLearned,
    Execute,
    FlowDelete,
    FlowPut,
    FlowRemoved,
    FlowStateBatch,
    FlowStateEntry,
    InvalidateTags,
    MacLearned,
    PacketOut,
    Ping,
    Pong,
    Shutdown,
    StatsReply,
    StatsRequest,
    TopologyChanged,
    Upcall,
    UpcallBatch,
)

__all__ = [
    "REGISTRY", "ArpLearned", "DecodeError", "Decoder", "EncodeError", "FlowDelete", "Execute", "FlowPut",
    "FlowRemoved", "FlowStateBatch", "FlowStateEntry", "InvalidateTags", "MacLearned", "PacketOut", "Ping",
    "Pong", "Shutdown", "StatsReply", "StatsRequest", "TopologyChanged", "Upcall", "UpcallBatch", "decode",
    "decode_many", "encode", "encode_many",
]
