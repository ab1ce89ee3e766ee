"""Traffic sources for ``shardnet bench``: what is fed into the datapath, frame by frame, built before the run.

Owns the ``Feed``: frames in send order with their ingress port and whether each is the first frame of a flow
(a datapath miss the harness waits an answer for).  Two sources:

- ``synthetic_feed``: F distinct new flows of a scenario (bench.scenarios), optionally mixed with repeated
  frames of flows sent at least ``lag`` new flows earlier (so they are installed: datapath hits), making up
  ``repeat_ratio`` of all frames;
- ``pcap_feed``: recorded frames (bench.pcap), the ingress port chosen per frame by its source MAC (the
  scenario's table) or one fixed port; a frame is "new" when its flow key was not seen before.

Frames are built once here, so the measured phase only sends bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bench.pcap import Record
from bench.scenarios import Scenario
from packet.codec import ParseError, build, parse
from packet.flowkey import flow_key


@dataclass
class Feed:
    ports: list[str] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    new: list[bool] = field(default_factory=list)
    packets: list = field(default_factory=list)          # parsed Packet of each new frame (simulation floor)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, port: str, frame: bytes, new: bool, pkt=None) -> None:
        self.ports.append(port)
        self.frames.append(frame)
        self.new.append(new)
        if new:
            self.packets.append((port, pkt))

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def n_new(self) -> int:
        return len(self.packets)


def synthetic_feed(scenario: Scenario, start: int, n: int, repeat_ratio: float = 0.0, lag: int = 1024,
                   seed: int = 1) -> Feed:
    """``n`` distinct new flows (indices start..start+n-1) plus repeats; ``repeat_ratio`` in [0, 0.95]."""
    if not 0.0 <= repeat_ratio <= 0.95:
        raise ValueError("repeat ratio must be between 0 and 0.95")
    flows = scenario.flows(start, n)
    frames = [build(pkt) for _, pkt in flows]
    feed = Feed()
    n_rep = round(n * repeat_ratio / (1.0 - repeat_ratio)) if repeat_ratio else 0
    rng = random.Random(seed)
    # positions (in new-flow count) after which a repeat is sent; a repeat needs lag flows sent before it
    after = sorted(rng.randrange(min(lag, n), n + 1) for _ in range(n_rep)) if n_rep and n > 0 else []
    r = 0
    for i, ((port, pkt), frame) in enumerate(zip(flows, frames, strict=True)):
        while r < len(after) and after[r] <= i:
            j = rng.randrange(0, max(1, i - lag + 1))
            feed.add(flows[j][0], frames[j], False)
            r += 1
        feed.add(port, frame, True, pkt)
    while r < len(after):
        j = rng.randrange(0, max(1, n - lag + 1))
        feed.add(flows[j][0], frames[j], False)
        r += 1
    return feed


def pcap_feed(records: list[Record], mac_ports: dict[int, str], port: str | None = None) -> Feed:
    """Recorded frames; ``port`` forces one ingress port, else the source MAC picks it (unknown: skipped)."""
    feed = Feed()
    seen: set[tuple] = set()
    for rec in records:
        frame = rec.frame
        if len(frame) < 14:
            feed.skipped["runt"] = feed.skipped.get("runt", 0) + 1
            continue
        in_port = port or mac_ports.get(int.from_bytes(frame[6:12], "big"))
        if in_port is None:
            feed.skipped["unknown_source_mac"] = feed.skipped.get("unknown_source_mac", 0) + 1
            continue
        try:
            pkt = parse(frame)
        except ParseError:
            feed.add(in_port, frame, False)                # the datapath drops and counts it
            continue
        key = flow_key(pkt, in_port)
        new = key not in seen
        seen.add(key)
        feed.add(in_port, frame, new, pkt)
    return feed
