"""Flow-state keys (StateKey) and the waiting room's need keys: one definition each, compatible with the wire."""

from __future__ import annotations

import pytest

from backchannel.codec import decode, encode
from backchannel.messages import FlowStateBatch, FlowStateEntry
from packet.addr import ip2int
from tests.scenario.test_trace_stateful import VM3, gw_tracer
from topology.nat_leases import BLOCK_SIZE
from workers.parking import ParkingLot
from workers.simulation.result import (
    CONNTRACK,
    FWD_DNAT,
    FWD_SNAT,
    REV_SNAT,
    FlowStateWrite,
    NeedArp,
    NeedFragment,
    NeedLease,
    StateKey,
    arp_need_key,
    fragment_need_key,
    lease_need_key,
    need_key,
    state_key,
)
from workers.simulation.state import MISSING, LocalState, snat_block

KEY = StateKey(ip2int("10.0.0.2"), ip2int("203.0.113.5"), 6, 40000, 443, "r1")


def test_a_state_key_is_the_plain_tuple_on_the_wire_and_in_a_dict():
    plain = tuple(KEY)
    assert KEY == plain and hash(KEY) == hash(plain)
    assert {(FWD_SNAT, plain): 1}[(FWD_SNAT, KEY)] == 1
    got = decode(encode(FlowStateBatch((FlowStateEntry(FWD_SNAT, KEY, (1, 2), 3.0),), 0)))
    decoded = got.entries[0].key
    assert type(decoded) is tuple and decoded == KEY
    assert StateKey(*decoded).device == "r1" and StateKey(*decoded).dport == 443


def test_state_key_builds_the_named_tuple():
    k = state_key(KEY[:5], "r1")
    assert type(k) is StateKey and k == KEY and (k.src, k.sport, k.device) == (KEY.src, 40000, "r1")


def test_local_state_finds_replicated_entries_by_either_form():
    st = LocalState()
    st.apply([FlowStateWrite(CONNTRACK, tuple(KEY), None)], now=0.0)      # as a worker applies a relayed batch
    assert st.flow_state_get(CONNTRACK, KEY, 1.0) is None
    assert st.flow_state_get(CONNTRACK, tuple(KEY), 1.0) is None
    assert st.flow_state_get(FWD_DNAT, KEY, 1.0) is MISSING


def test_the_simulation_builds_state_keys():
    t = gw_tracer()
    t("tenant.vm1", VM3 + ",ip_dst=203.0.113.5,proto=tcp,tp_src=40000,tp_dst=443")
    writes = t.last.flow_state
    assert writes and all(type(w.key) is StateKey for w in writes)
    assert {w.key.device for w in writes if w.kind != CONNTRACK} == {"r1"}


def test_snat_block_of_reverse_and_forward_entries():
    ip = ip2int("198.51.100.100")
    rev = (ip2int("203.0.113.5"), ip, 6, 443, 5 * BLOCK_SIZE + 7, "r1")       # plain tuple: as decoded
    assert snat_block(REV_SNAT, rev, (1, 2)) == ("r1", ip, 5 * BLOCK_SIZE)
    assert snat_block(FWD_SNAT, KEY, (ip, 5 * BLOCK_SIZE + 7)) == ("r1", ip, 5 * BLOCK_SIZE)
    assert snat_block(FWD_DNAT, KEY, (ip, 80)) is None and snat_block(CONNTRACK, KEY, None) is None
    st = LocalState()
    st.add_nat_block("r1", ip, 5 * BLOCK_SIZE)
    st.add_nat_block("r1", ip, 6 * BLOCK_SIZE)
    st.apply([FlowStateWrite(REV_SNAT, rev, (1, 2))], now=0.0)
    assert st.idle_nat_blocks() == [("r1", ip, 6 * BLOCK_SIZE)]


@pytest.mark.parametrize("need, key", [
    (NeedArp("r1", "r1.uplink", 7), ("arp", "r1", 7)),
    (NeedLease("r1", 7, 5000, 6000), ("lease", "r1", 7)),
    (NeedFragment("bridge", "tenant"), ("fragment", "bridge", "tenant")),
])
def test_need_keys(need, key):
    assert need_key(need) == key
    # the shell files an answer under the same key as the need it answers, from the answer's fields alone
    answered = {NeedArp: lambda n: arp_need_key(n.router, n.ip), NeedLease: lambda n: lease_need_key(n.device, n.ip),
                NeedFragment: lambda n: fragment_need_key(n.kind, n.name)}[type(need)](need)
    assert answered == key
    lot = ParkingLot()
    assert lot.park(need, "pkt", 0.0) is True and lot.waiting_on(key) == 1
    assert lot.satisfy(key) == ["pkt"]


def test_need_key_refuses_what_is_not_a_need():
    with pytest.raises(TypeError):
        need_key(("arp", "r1", 7))
