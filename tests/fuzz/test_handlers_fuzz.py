"""Hostile messages of every registered type against the handlers: nothing a peer sends makes one raise.

Each example wires two Workers and a DatapathProcess in one process (tests/inprocess.py), leaves two upcalls in
flight, then sends a list of messages of every registered type — valid shapes with hostile contents (names of
real topology objects mixed with junk, seqs that are in flight and seqs that are not, frames that parse and
frames that do not, state keys of real connections, extreme values of every range), some of them broken one
element deep (tests/fuzz/message_strategies.py ``malformed``).  Every message is encoded and decoded by the
receiver's counting Decoder, as the loops do: what is refused must be counted, what decodes goes to
``Worker.handle`` and ``DatapathProcess.handle``.  Then ordinary life goes on: the messages the handlers
produced are delivered, traffic flows both ways, time passes (parking deadlines, expiry).  No exception may
escape any handler at any point; a broken message must be refused, and every refusal is counted.

Examples: the hypothesis profile (tests/conftest.py): bounded in ``make test``, many more in ``make fuzz``.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from backchannel import codec
from backchannel import messages as m
from backchannel.codec import DecodeError, Decoder, encode
from packet.addr import ip2int
from packet.codec import build
from tests.fuzz.message_strategies import any_frame, any_name, malformed, message_strategies
from tests.fuzz.packet_strategies import packets
from tests.inprocess import VM1, Wire, frame, from_internet, to_internet, vm1_to_vm2, vm2_to_vm1

pack = codec.new_packer().pack

PORTS = ["tenant.vm1", "tenant.vm2", "tenant.vm3", "tenant.up", "r1.tenant", "r1.uplink"]
DEVICES = ["tenant", "r1"]
NAMES = [*PORTS, *DEVICES, "fw", "r1-in", "r1-out", "host-a", "host-b", "bridge", "router", "chain", "port",
         "device", "host", "port_group", "port_groups", "load_balancer", "*", "", "tenant.", ".vm1", "r1.nope",
         "mac", "arp", "conntrack", "fwd_snat"]
VM_IP, VM2_IP, SNAT_IP = ip2int("10.0.0.2"), ip2int("10.0.0.3"), ip2int("198.51.100.100")
FRAMES = [vm1_to_vm2(2000), vm2_to_vm1(2000), vm1_to_vm2(2000, "ack"), to_internet(3000),
          from_internet("198.51.100.100", 5000), from_internet("198.51.100.100", 65535),
          frame(f"{VM1},eth_dst=ff:ff:ff:ff:ff:ff,arp_op=1,arp_spa=10.0.0.2,arp_tpa=10.0.0.1"),
          frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=10.0.0.1,proto=icmp,icmp_type=8"),
          frame(f"{VM1},eth_dst=02:0a:00:00:00:01,ip_src=10.0.0.2,ip_dst=203.0.113.5,proto=udp,ttl=1"),
          frame("eth_src=02:0b:00:00:00:01,eth_dst=02:0a:00:00:00:02,ip_src=203.0.113.5,ip_dst=198.51.100.100,"
                "icmp_type=3,icmp_code=4,inner_proto=tcp,inner_ip_src=198.51.100.100,inner_ip_dst=203.0.113.5,"
                "inner_tp_src=5000,inner_tp_dst=443"),
          vm1_to_vm2(2000)[:30], b""]

# upcalls left in flight: TCP, TCP to the internet, ARP (no IP header), GRE (no ports)
IN_FLIGHT = (vm1_to_vm2(2000), to_internet(3000), FRAMES[6],
             frame(f"{VM1},eth_dst=02:00:00:00:00:02,ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=47,payload_len=8"))

name = st.one_of(st.sampled_from(NAMES), any_name)
port = st.one_of(st.sampled_from(PORTS), name)
device = st.one_of(st.sampled_from(DEVICES), name)
host = st.one_of(st.sampled_from(["host-a", "host-b"]), name)
frames = st.one_of(st.sampled_from(FRAMES), packets().map(build), any_frame)
seq = st.one_of(st.integers(0, 8), st.integers(-(2**63), 2**63 - 1))             # 1..4 are in flight
index = st.one_of(st.integers(-2, 3), st.integers(-(2**63), 2**63 - 1))
PLAIN = message_strategies(name=name, frame=frames, seq=seq, index=index, port=port, device=device, host=host)
# relayed payloads: messages as their senders encode them, or bytes that are not one
payload = st.one_of(frames, st.sampled_from(sorted(PLAIN, key=lambda c: c.TAG)).flatmap(PLAIN.get).map(encode))
HOSTILE = message_strategies(name=name, frame=frames, seq=seq, index=index, port=port, device=device, host=host,
                             payload=payload)
# state keys and bindings of the connections the traffic above makes, beside random ones
real_key = st.sampled_from([(ip2int("10.0.0.3"), VM_IP, 6, 80, 2000, "tenant"),
                            (ip2int("203.0.113.5"), SNAT_IP, 6, 443, 5000, "r1"),
                            (VM_IP, ip2int("203.0.113.5"), 6, 3000, 443, "r1")])
real_entry = st.builds(m.FlowStateEntry, st.sampled_from(sorted(m.FLOW_STATE_KINDS.values)), real_key,
                       st.none() | st.tuples(st.sampled_from([0, VM_IP, SNAT_IP, 2**32 - 1]),
                                             st.sampled_from([0, 1, 2000, 5000, 65535])), st.floats(allow_nan=False))
HOSTILE[m.FlowStateBatch] = st.builds(m.FlowStateBatch, st.lists(real_entry | HOSTILE[m.FlowStateEntry],
                                                                  max_size=6).map(tuple), index)
hostile_message = st.sampled_from(sorted(HOSTILE, key=lambda c: c.TAG)).flatmap(HOSTILE.get)


def _life_goes_on(wire: Wire) -> None:
    """What the handlers produced is delivered; traffic flows both ways; time passes."""
    wire.pump()
    wire.inject("tenant.vm1", vm1_to_vm2(2000), vm1_to_vm2(2001), to_internet(3000))
    wire.inject("tenant.vm2", vm2_to_vm1(2000), vm2_to_vm1(2001))
    wire.inject("r1.uplink", from_internet("198.51.100.100", 5000))
    for seconds in (1.0, 6.0, 61.0):
        wire.tick(seconds)
    wire.inject("tenant.vm1", vm1_to_vm2(2002), *FRAMES)


@given(st.lists(st.tuples(hostile_message, st.booleans(), st.integers(0, 1)), min_size=1, max_size=12),
       st.data())
def test_no_message_makes_a_handler_raise_and_every_refusal_is_counted(items, data):
    wire = Wire()
    try:
        dp_decoder = Decoder(wire.dp.counters)
        wire.dp.handle(m.Inject("tenant.vm1", IN_FLIGHT), wire.now)
        wire.dp.housekeeping(wire.now)               # upcalls 1..4 are in flight, their batches not yet read
        refused = broken_sent = 0
        for msg, brk, w in items:
            broken = malformed(msg, data) if brk else None
            broken_sent += broken is not None
            wire_bytes = encode(msg) if broken is None else pack(broken)
            worker = wire.workers[w]
            decoded = {}
            for who, decoder in (("worker", wire.decoders[w]), ("datapath", dp_decoder)):
                before = decoder.rejected
                try:
                    decoded[who] = decoder.decode_many(wire_bytes)
                except DecodeError:
                    assert broken is not None, f"{msg!r} refused"
                    assert decoder.rejected == before + 1
                    refused += 1
                    continue
                assert broken is None, f"{broken!r} decoded"
            if decoded:
                for x in decoded["worker"]:
                    worker.handle(x, wire.now)
                for x in decoded["datapath"]:
                    wire.dp.handle(x, wire.now)
        _life_goes_on(wire)
        rejected = dp_decoder.rejected + sum(d.rejected for d in wire.decoders)
        assert refused == 2 * broken_sent             # each broken message refused by both receivers
        assert rejected >= refused                    # counted (relayed junk payloads come on top)
    finally:
        wire.close()
