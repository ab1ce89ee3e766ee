"""Flow tags: the one vocabulary for what a flow's decision depended on (in the spirit of MidoNet's FlowTagger).

A simulation tags its result with everything it read (devices, ports, chains, MAC and ARP entries, flow state,
NAT blocks); the worker installs the flow with those tags; a change to any of those things invalidates the
flows carrying its tag.  The simulation that tags a flow and the shell that invalidates it must spell the tag
the same way, or the flow is never invalidated — so a tag is made only here, one constructor per kind, and
nobody spells one by hand (tests/unit/test_tags.py scans the tree for that).

A tag is a plain string (it crosses process boundaries as ``tuple[str, ...]`` in FlowInstall and
InvalidateTags): ``<kind>:<what>``.

    device(kind, name)      "bridge:tenant", "router:r1", "chain:sub", "load_balancer:lb", "port_group:web"
                            (a TopologyChanged object; bridge(), router(), chain(), load_balancer(),
                            port_group() and port() are the same tag for their kind)
    port(port_id)           "port:tenant.vm1"
    mac(bridge, vlan, mac)  "mac:tenant:0:020000000001"                  an entry of a bridge's MAC table
    arp(router, ip)         "arp:r1:3325256705"                          an entry of a router's ARP table
    flow_state(kind, key)   "ct:10.0.0.2:40000>198.51.100.1:80/6@tenant"  a conntrack entry
                            "nat:fwd_snat:10.0.0.2:40000>...@r1"         a NAT entry of that kind
    nat_block(device, ip)   "nat_block:r1:3405803777"                    the SNAT blocks held for (device, ip)
    kind_of(tag)            "bridge", "port", "mac", "arp", "ct", "nat", "nat_block", ...

These run for every simulated packet, and are cached: the same devices, ports, stations and addresses recur flow
after flow, and a cached tag is one string object (its hash computed once) that every flow carrying it shares,
in the worker's flow table and in the sets and dicts the simulation adds it to.  The flow-state key text and
its addresses are cached too (a new connection's key is new, its addresses mostly not).
"""

from __future__ import annotations

from functools import lru_cache

from packet.addr import ip_port_text
from workers.simulation.result import CONNTRACK, NAT_KINDS

# tag kinds: topology objects (the kinds of TopologyChanged and of the topology store)
BRIDGE = "bridge"
ROUTER = "router"
PORT = "port"
CHAIN = "chain"
LOAD_BALANCER = "load_balancer"
PORT_GROUP = "port_group"
HOST = "host"
# tag kinds: agent state
MAC = "mac"
ARP = "arp"
CT = "ct"
NAT = "nat"
NAT_BLOCK = "nat_block"
KINDS = (BRIDGE, ROUTER, PORT, CHAIN, LOAD_BALANCER, PORT_GROUP, HOST, MAC, ARP, CT, NAT, NAT_BLOCK)

SEP = ":"
_BRIDGE, _ROUTER, _PORT, _CHAIN = BRIDGE + SEP, ROUTER + SEP, PORT + SEP, CHAIN + SEP
_LOAD_BALANCER, _PORT_GROUP = LOAD_BALANCER + SEP, PORT_GROUP + SEP
_CT, _NAT = CT + SEP, NAT + SEP
_FLOW_STATE_PREFIX = {CONNTRACK: _CT, **{k: _NAT + k + SEP for k in NAT_KINDS}}


# -- topology objects --------------------------------------------------------------------------------------
def device(kind: str, name: str) -> str:
    """The tag of topology object ``name`` of ``kind`` ("bridge", "router", "port", "chain", ...): the one a
    TopologyChanged(kind, name) invalidates."""
    return kind + SEP + name


@lru_cache(maxsize=1 << 16)
def bridge(name: str) -> str:
    return _BRIDGE + name


@lru_cache(maxsize=1 << 16)
def router(name: str) -> str:
    return _ROUTER + name


@lru_cache(maxsize=1 << 16)
def port(port_id: str) -> str:
    return _PORT + port_id


@lru_cache(maxsize=1 << 16)
def chain(name: str) -> str:
    return _CHAIN + name


@lru_cache(maxsize=1 << 16)
def load_balancer(name: str) -> str:
    return _LOAD_BALANCER + name


@lru_cache(maxsize=1 << 16)
def port_group(name: str) -> str:
    return _PORT_GROUP + name


# -- agent state -------------------------------------------------------------------------------------------
@lru_cache(maxsize=1 << 16)
def mac(bridge: str, vlan: int, mac: int) -> str:
    """A (learned or looked-up) entry of ``bridge``'s MAC table: MAC as 12 hex digits."""
    return f"mac:{bridge}:{vlan}:{mac:012x}"


def arp(router: str, ip: int) -> str:
    """An entry of ``router``'s ARP table (``ip`` as an int)."""
    return f"arp:{router}:{ip}"


@lru_cache(maxsize=1 << 12)
def nat_block(device: str, ip: int) -> str:
    """The SNAT port blocks held for (device, ip): a new block may free a port a parked choice wanted."""
    return f"nat_block:{device}:{ip}"


_IP_TEXT: dict[int, str] = {}
_MAX_IP_TEXT = 1 << 16


def _ip(ip: int) -> str:
    """An address as it stands before ``:port`` (IPv6 in brackets), cached: a new connection's key is a new key,
    but its addresses are mostly ones formatted before (a VM, a gateway, a NAT address)."""
    text = _IP_TEXT.get(ip)
    if text is None:
        if len(_IP_TEXT) >= _MAX_IP_TEXT:
            _IP_TEXT.clear()
        text = _IP_TEXT[ip] = ip_port_text(ip, 0)[:-2]
    return text


_KEY_TEXT: dict[tuple, str] = {}
_CT_TAG: dict[tuple, str] = {}
_MAX_KEYS = 1 << 16


def key_str(key: tuple) -> str:
    """Human/tag form of a flow-state key: 'src:sport>dst:dport/proto@device' (cached: it is a hot tag; a
    plain dict, emptied when it holds ``_MAX_KEYS``, costs less per new key than an LRU's bookkeeping)."""
    text = _KEY_TEXT.get(key)
    if text is None:
        if len(_KEY_TEXT) >= _MAX_KEYS:
            _KEY_TEXT.clear()
        src, dst, proto, sp, dp, dev = key
        text = _KEY_TEXT[key] = f"{_ip(src)}:{sp}>{_ip(dst)}:{dp}/{proto}@{dev}"
    return text


def flow_state(kind: str, key: tuple) -> str:
    """The tag of a flow-state entry (conntrack, or a NAT kind): flows that read or wrote it carry it, and its
    expiry or replacement invalidates them.  A conntrack tag is cached whole: a new connection's reverse key
    is tagged when it is written and again when the write invalidates."""
    if kind == CONNTRACK:
        tag = _CT_TAG.get(key)
        if tag is None:
            if len(_CT_TAG) >= _MAX_KEYS:
                _CT_TAG.clear()
            tag = _CT_TAG[key] = _CT + key_str(key)
        return tag
    prefix = _FLOW_STATE_PREFIX.get(kind)
    if prefix is None:
        prefix = _NAT + kind + SEP
    return prefix + key_str(key)


def arp_entry(tag: str) -> tuple[str, int]:
    """(router, ip) of an ``arp()`` tag."""
    router, _, ip = tag[len(ARP) + 1:].rpartition(SEP)
    return router, int(ip)


_STATE_PREFIXES = (_CT, _NAT, NAT_BLOCK + SEP)


def of_flow_state(tag: str) -> bool:
    """A conntrack, NAT or NAT-block tag (what a connection's own setup writes), not a topology object's or a
    MAC or ARP entry's."""
    return tag.startswith(_STATE_PREFIXES)


def kind_of(tag: str) -> str:
    """The kind of a tag: what precedes its first ':' ("bridge", "mac", "ct", "nat", ...)."""
    return tag.partition(SEP)[0]
