"""SNAT port-block allocation: the interface and the in-process allocator.

A block is 64 consecutive ports (aligned on 64) of one (device, ip).  An agent leases blocks and hands out ports
from the blocks it holds; two holders never hold the same block.  The ZooKeeper allocator (ephemeral lease
nodes, ``topology.store.leases.StoreNatAllocator``, which adds ``mark_idle``/``release_idle``) implements the
same interface for several agents; this in-process one serves the embedded default,
the trace and unit tests.  Ownership: one allocator per store backend; thread-safe.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

BLOCK_SIZE = 64


def blocks_in_range(port_start: int, port_end: int) -> list[int]:
    """Starts of the blocks that overlap [port_start, port_end]."""
    first = port_start - port_start % BLOCK_SIZE
    return list(range(first, port_end + 1, BLOCK_SIZE))


def random_free_blocks(port_start: int, port_end: int, taken: Callable[[int], bool], rng: random.Random,
                       probes: int = 8) -> Iterator[int]:
    """The blocks of [port_start, port_end] that are not ``taken``, in a random order (agents sharing a store
    then rarely race for one), drawn lazily: a lease takes the first one it can claim, so shuffling the whole
    range first (~1,000 blocks: more than a millisecond of the supervisor's CPU per lease) is waste.  A few
    random probes find a free block at once while the range is mostly free; after them, the free blocks left,
    in a random order (a Fisher-Yates shuffle done one draw at a time)."""
    blocks = range(port_start - port_start % BLOCK_SIZE, port_end + 1, BLOCK_SIZE)
    tried: set[int] = set()
    for _ in range(probes):
        b = blocks[rng.randrange(len(blocks))]
        if b not in tried:
            tried.add(b)
            if not taken(b):
                yield b
    free = [b for b in blocks if b not in tried and not taken(b)]
    n = len(free)
    while n:
        i = rng.randrange(n)
        n -= 1
        free[i], free[n] = free[n], free[i]
        yield free[n]


class NatAllocator(Protocol):
    def lease(self, owner: str, device: str, ip: int, port_start: int, port_end: int) -> int | None: ...
    def release(self, owner: str, device: str, ip: int, block: int) -> None: ...


class MemoryNatAllocator:
    """Blocks leased in process memory.  ``lease`` picks a free block at random inside the range; None when
    every block of the range is held (exhaustion: the caller drops and counts)."""

    def __init__(self, seed: int | None = None):
        self._held: dict[tuple[str, int, int], str] = {}    # (device, ip, block) → owner
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.counters = {"nat_leases": 0, "nat_releases": 0, "nat_exhausted": 0}

    def lease(self, owner: str, device: str, ip: int, port_start: int, port_end: int) -> int | None:
        with self._lock:
            held = self._held
            block = next(random_free_blocks(port_start, port_end, lambda b: (device, ip, b) in held, self._rng),
                         None)
            if block is None:
                self.counters["nat_exhausted"] += 1
                return None
            held[(device, ip, block)] = owner
            self.counters["nat_leases"] += 1
            return block

    def release(self, owner: str, device: str, ip: int, block: int) -> None:
        with self._lock:
            if self._held.get((device, ip, block)) == owner:
                del self._held[(device, ip, block)]
                self.counters["nat_releases"] += 1

    def held_by(self, owner: str) -> list[tuple[str, int, int]]:
        with self._lock:
            return [k for k, o in self._held.items() if o == owner]
