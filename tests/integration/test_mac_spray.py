"""A VM sprays source MACs (a CAM-table overflow attack) at a real agent on a real ZooKeeper: the bridge's MAC
table stays at its cap in every worker, the store's table and the writes to it stay bounded, and forwarding
between the known MACs is unaffected (issue 12, item 4)."""

from __future__ import annotations

import time

import pytest

from engine.supervisor import Agent
from packet.addr import ip2int, mac2int
from tests.integration.test_engine import frame, wait_for

TOPO = """
version: 1
hosts:
  host-a: {tunnel_ip: 127.0.0.11}
  host-b: {tunnel_ip: 127.0.0.12}
bridges:
  tenant:
    ports:
      vm1: {host: host-a, interface: tap-vm1}
      vm2: {host: host-a, interface: tap-vm2}
      vm3: {host: host-b, interface: tap-vm3}
"""

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
SPRAY = 100_000                  # frames, half from vm1 and half from vm2, each with a new source MAC
CHUNK = 2_000
PER_PORT, PER_BRIDGE = 600, 1_000
RATE, BURST = 50.0, 200.0


def udp(src: str, dst: str, sport: int) -> bytes:
    return frame(f"eth_src={src},eth_dst={dst},ip_src=10.0.0.2,ip_dst=10.0.0.3,proto=udp,tp_src={sport},"
                 "tp_dst=9")


def sprayed_mac(i: int) -> str:
    return ":".join(f"{b:02x}" for b in (0x06_00_0000_0000 | i).to_bytes(6, "big"))


def spray(n: int, start: int, dst: str) -> list[bytes]:
    """``n`` frames, each with a new source MAC (bytes 6..11 patched into template frames of 64 source ports,
    so the upcalls spread over the workers as a real spray's would)."""
    templates = [bytearray(udp(sprayed_mac(0), dst, 4000 + p)) for p in range(64)]
    out = []
    for i in range(start, start + n):
        t = templates[i % 64]
        t[6:12] = mac2int(sprayed_mac(i)).to_bytes(6, "big")
        out.append(bytes(t))
    return out


@pytest.fixture
def agent(zk_server, zk_chroot, tmp_path):
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO)
    a = Agent(store=f"zk://{zk_server.hosts}{zk_chroot}", host="host-a", workers=2, topology=str(path),
              max_macs_per_port=PER_PORT, max_macs_per_bridge=PER_BRIDGE, learn_rate=RATE, learn_burst=BURST,
              runtime_base=str(tmp_path)).start()
    yield a
    a.stop()


def dp_stats(a: Agent) -> dict:
    return a.query([-1], "stats")[-1]


def outputs_of(a: Agent) -> dict[str, int]:
    return {port: len(frames) for port, frames in a.outputs().items() if frames}


def test_a_vm_spraying_100k_source_macs(agent):
    a = agent
    vm3_tunnel = f"tunnel:{ip2int('127.0.0.12')}:{a.mirror.get('bridge', 'tenant').ports['vm3'].tunnel_key}"
    # vm1 and vm2 speak first: their MACs are learned (and written to the store)
    a.inject("tenant.vm1", [udp(MAC1, "ff:ff:ff:ff:ff:ff", 1)])
    wait_for(lambda: a.tables.macs["tenant"].lookup(mac2int(MAC1)) == "tenant.vm1", what="vm1's MAC learned")
    a.inject("tenant.vm2", [udp(MAC2, MAC1, 2)])
    wait_for(lambda: a.tables.macs["tenant"].lookup(mac2int(MAC2)) == "tenant.vm2", what="vm2's MAC learned")
    a.outputs()

    t0 = time.monotonic()
    sent = 0
    out: dict[str, int] = {}

    def drain() -> None:                               # a few thousand frames per answer (messages are bounded)
        for port, n in outputs_of(a).items():
            out[port] = out.get(port, 0) + n

    for start in range(0, SPRAY // 2, CHUNK // 2):
        a.inject("tenant.vm1", spray(CHUNK // 2, start, MAC2))
        a.inject("tenant.vm2", spray(CHUNK // 2, SPRAY + start, MAC1))
        sent += CHUNK
        # keep the upcalls in flight under the admission limit: wait for the workers to catch up
        wait_for(lambda n=sent: (s := dp_stats(a))["datapath_rx"] >= n + 2 and s["datapath_inflight"] < CHUNK,
                 timeout=60, what="the datapath to catch up")
        drain()
    elapsed = time.monotonic() - t0
    wait_for(lambda: dp_stats(a)["datapath_inflight"] == 0, timeout=30, what="every upcall answered")
    drain()
    # the workers' MacLearned reach the supervisor after their answers reach the datapath: wait until it has
    # taken them all (its count of learned + refused entries stops moving over two reads 0.3 s apart)
    taken = [None]

    def supervisor_settled() -> bool:
        sup = a.stats()["supervisor"]
        n = sum(sup.get(k, 0) for k in ("tables_learned", "tables_moves", "tables_refreshed",
                                        "tables_learn_rate_limited", "tables_full_refused"))
        settled, taken[0] = n == taken[0], n
        time.sleep(0.3)
        return settled

    wait_for(supervisor_settled, timeout=30, what="the supervisor to take every learned MAC")
    stats = a.stats()
    dp = stats["datapath"]
    print(f"\nsprayed {sent} frames in {elapsed:.1f}s; datapath {dp['datapath_rx']} rx, "
          f"{dp['dispatcher_upcalls']} upcalls, {dp['datapath_installs']} installs")

    # every frame was forwarded (to the known destination MAC), none lost to the spray
    assert dp["dispatcher_queue_full"] == dp["dispatcher_rate_limited"] == 0
    assert out.get("tenant.vm2", 0) == out.get("tenant.vm1", 0) == SPRAY // 2
    assert out.get(vm3_tunnel, 0) == 0                                # unicast: nothing flooded

    # each worker's table of the bridge stays at its cap; the rest was refused and counted
    for w in stats["workers"]:
        assert w["worker_macs"] == PER_BRIDGE, w
        assert w["macs_refused_port"] + w["macs_refused_bridge"] > SPRAY // 4
    assert sum(w["macs_refused_bridge"] for w in stats["workers"]) > 0       # the ports' caps add up to more

    # the store: at most the cap of entries, and writes bounded by the ports' write rates
    sup = stats["supervisor"]
    nodes = len(a.store.children("/tables/mac/tenant/0"))
    assert nodes <= PER_BRIDGE
    writes = sup["tables_learned"] + sup["tables_moves"]
    assert writes <= 2 + 2 * (BURST + RATE * (elapsed + 5)), sup   # vm1 and vm2's MACs, then two ports' rates
    assert sup["tables_learn_rate_limited"] + sup["tables_full_refused"] > 0
    print(f"store: {nodes} entries, {writes} writes, {sup['tables_learn_rate_limited']} rate-limited, "
          f"{sup['tables_full_refused']} refused (full)")

    # forwarding between the known MACs is unaffected: new flows, simulated, unicast
    a.inject("tenant.vm2", [udp(MAC2, MAC1, 7000 + i) for i in range(10)])
    a.inject("tenant.vm1", [udp(MAC1, MAC2, 8000 + i) for i in range(10)])
    wait_for(lambda: dp_stats(a)["datapath_tx"] >= SPRAY + 2 + 20, what="the known MACs' frames")
    time.sleep(0.2)
    assert outputs_of(a) == {"tenant.vm1": 10, "tenant.vm2": 10}
    # a sprayed MAC that was not learned is flooded to (so it still gets there)
    last = sprayed_mac(SPRAY // 2 - 1)
    assert a.tables.macs["tenant"].lookup(mac2int(last)) is None
    a.inject("tenant.vm2", [udp(MAC2, last, 9000)])
    flooded: dict[str, int] = {}

    def both() -> bool:
        for port, n in outputs_of(a).items():
            flooded[port] = flooded.get(port, 0) + n
        return "tenant.vm1" in flooded and vm3_tunnel in flooded

    wait_for(both, what="the frame to an unlearned MAC flooded")
    assert flooded == {"tenant.vm1": 1, vm3_tunnel: 1}
