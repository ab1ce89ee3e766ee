"""Megaflow matches: the mask a simulation's flow is installed with (pure; the wire form is packet.flowkey's).

A flow matches on what its decision read and nothing else (OVS's wildcarding): the key slots a simulation read
whole (``SimResult.fields_read``), the address fields it read only up to a prefix (``prefixes_read``: a route's
or a rule's prefix), the ingress port and the ethertype always.  Every packet the flow then matches would be
simulated to the same actions — the invariant that makes wildcarding safe, checked by
tests/fuzz/test_megaflow_property.py.  A result that generated packets (an ICMP error, an ARP request, a
reset) is installed exact, even when what it generated went nowhere: what it generates, and what that changes
on its way, depends on the whole packet (``SimResult.exact``).
"""

from __future__ import annotations

from packet.flowkey import ADDR_BITS, FULL, KEY_SLOTS, prefix_mask

_CACHE: dict[tuple, tuple] = {}
_CACHE_MAX = 4096


def flow_match(res) -> tuple:
    """The wire match (FlowPut.match) of a FORWARD or DROP result's flow; ``()`` for exact match."""
    if res.exact or res.generated or res.waiting:
        return ()
    ck = (res.fields_read, res.prefixes_read)
    hit = _CACHE.get(ck)
    if hit is not None:
        return hit
    fields = res.fields_read
    prefixes = dict(res.prefixes_read)
    items = [("in_port", FULL), ("eth_type", FULL)]
    for name in KEY_SLOTS[1:]:
        if name == "eth_type":
            continue
        if name in fields:
            items.append((name, FULL))
        elif name in prefixes:
            m = prefix_mask(prefixes[name], ADDR_BITS.get(name, 32))
            if m:
                items.append((name, m))
    out = tuple(items)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[ck] = out
    return out
