"""Authenticated flow-state datagrams: what travels on the flow-state VNI between agents.

Owns the datagram format, the signing key set and the per-sender replay windows.  The underlay is not trusted
(DESIGN §7): anyone who can send a UDP datagram to an agent's tunnel port can forge its source address, so a
datagram on the flow-state VNI is accepted only when it carries a valid HMAC-SHA256 made with a deployment key
and a sequence number the sender has not used before.

Datagram (the VXLAN payload on VNI 0xFFFFFF):

    version (1 byte, 1) | key id (1) | sender length (1) | sender host name (utf-8) | seq (8, big endian)
    | message (one backchannel-encoded message) | HMAC-SHA256 (32) over the VXLAN header and everything before

- Keys: the first key of the set signs; every key of the set verifies (a second key is accepted while a new
  one is rolled out).  The key id is the first byte of SHA-256(key), so the receiver tries one key, not all.
- Sequence numbers: a sender starts at its wall clock in nanoseconds and counts up, so a restarted agent never
  reuses one; the receiver keeps, per sender, the highest seq seen and a 1024-wide window below it (as IPsec's
  anti-replay window): a seq seen before, or older than the window, is a replay.
- The sender's name must be a known host whose tunnel address is the datagram's source address (defence in
  depth; the HMAC is what counts).

``open`` raises Refused(reason) — "format", "sender", "key", "auth", "replay" — and never anything else on
peer input.  Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time

VERSION = 1
MAC_LEN = 32
WINDOW = 1024
_SEQ = struct.Struct("!Q")


class Refused(Exception):  # noqa: N818 - a verdict on peer input, not a program error
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def key_id(key: bytes) -> int:
    return hashlib.sha256(key).digest()[0]


class StateAuth:
    """Signs what this agent sends, checks what it receives."""

    def __init__(self, sender: str, keys: tuple[bytes, ...], hosts: dict[str, int] | None = None,
                 start_seq: int | None = None):
        if not keys or not all(isinstance(k, bytes) and len(k) >= 16 for k in keys):
            raise ValueError("flow-state keys: at least one key of 16 bytes or more")
        name = sender.encode()
        if not 0 < len(name) < 256:
            raise ValueError(f"bad sender name {sender!r}")
        self.sender = sender
        self.keys = {key_id(k): k for k in reversed(keys)}      # the signing key wins an id clash
        self.signing = keys[0]
        self._prefix = bytes((VERSION, key_id(keys[0]), len(name))) + name
        self.seq = time.time_ns() if start_seq is None else start_seq
        self.hosts = dict(hosts or {})
        self._windows: dict[str, list[int]] = {}                   # sender → [highest seq, bitmap]

    def seal(self, vxlan_header: bytes, message: bytes) -> bytes:
        """The datagram payload for ``message`` (the caller prepends ``vxlan_header`` when sending)."""
        self.seq += 1
        body = self._prefix + _SEQ.pack(self.seq) + message
        return body + hmac.digest(self.signing, vxlan_header + body, "sha256")

    def open(self, src_ip: int, vxlan_header: bytes, data: bytes) -> tuple[str, bytes]:
        """(sender, message) of an authentic, fresh datagram; Refused otherwise."""
        if len(data) < 3 + 8 + MAC_LEN or data[0] != VERSION:
            raise Refused("format")
        n = data[2]
        head = 3 + n + 8
        if len(data) < head + MAC_LEN:
            raise Refused("format")
        try:
            sender = data[3:3 + n].decode()
        except UnicodeDecodeError:
            raise Refused("format") from None
        if self.hosts.get(sender) != src_ip or sender == self.sender:
            raise Refused("sender")
        key = self.keys.get(data[1])
        if key is None:
            raise Refused("key")
        body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
        if not hmac.compare_digest(mac, hmac.digest(key, vxlan_header + body, "sha256")):
            raise Refused("auth")
        (seq,) = _SEQ.unpack_from(data, 3 + n)
        self._check_replay(sender, seq)
        return sender, data[head:-MAC_LEN]

    def _check_replay(self, sender: str, seq: int) -> None:
        w = self._windows.get(sender)
        if w is None:
            self._windows[sender] = [seq, 1]
            return
        top, bits = w
        if seq > top:
            shift = seq - top
            w[0], w[1] = seq, ((bits << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            return
        age = top - seq
        if age >= WINDOW or bits >> age & 1:
            raise Refused("replay")
        w[1] = bits | 1 << age
