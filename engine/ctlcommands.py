"""The commands of ``shardnet ctl`` (CONTRACTS §5), run in the agent's process by engine/ctl.py.

Each command is ``fn(agent, state, **args) -> JSON-able result``; ``state`` is the control server's memory
between calls (``stats --rate``).  They use the embedding API only: ``Agent.command`` sends one command message
to the datapath or the workers and waits for the answers, so the datapath's and the workers' loops serve them
between packets.  Bad arguments raise CtlError with a message for the operator.
"""

from __future__ import annotations

import time

from backchannel import messages as m
from packet.addr import int2mac, ip_text
from packet.codec import build
from packet.flowkey import FULL, SLOT_INDEX, match_dict, normalized_flow_hash
from packet.packet import FLOW_KEY_FIELDS
from packet.spec import AddrMatch, SpecError, field_matches, parse_match, parse_spec
from workers import tags
from workers.logs import LEVELS
from workers.trace import binding_str

DP = m.DATAPATH_INDEX
PAGE = 5000
KEY_FIELDS = ("in_port", *FLOW_KEY_FIELDS)


class CtlError(ValueError):
    pass


def _match(spec: str | None) -> dict:
    if not spec:
        return {}
    try:
        return parse_match(spec)
    except SpecError as e:
        raise CtlError(f"--match: {e}") from None


def key_dict(key, mask=None) -> dict:
    """A flow key as the fields it matches (packet.flowkey.match_dict: text forms, None and wildcarded fields
    left out, a field matched on a prefix as ``ADDRESS/LEN``)."""
    return match_dict(key, mask)


def _key_matches(key, want: dict, mask=None) -> bool:
    """Whether a flow (its masked key and slot mask) matches packets with the ``want`` fields (values or
    AddrMatch CIDRs, packet.spec.parse_match): a field it wildcards does not count as matched; a field it
    matches on a prefix matches a CIDR that holds the whole prefix."""
    for k, v in want.items():
        i = SLOT_INDEX.get(k)
        if i is None:
            continue
        m = FULL if mask is None else mask[i]
        if not m:
            return False
        if m == FULL:
            if not field_matches(v, key[i]):
                return False
        elif type(v) is AddrMatch:
            if key[i] is None or (m & v.mask) != v.mask or (((key[i] & v.mask) == v.net) == v.negate):
                return False
        elif v is None or key[i] != v & m:
            return False
    return True


def _flows(agent, worker: int | None, want: dict) -> list[dict]:
    out, offset, w = [], 0, -1 if worker is None else worker
    while True:
        page = agent.command([DP], lambda req, at=offset: m.DumpFlowTable(req, w, at, PAGE))[DP]
        out.extend(f for f in page["flows"] if _key_matches(f["key"], want, f.get("mask")))
        offset += len(page["flows"])                   # a page may be short (bounded in bytes)
        if offset >= page["total"] or not page["flows"]:
            return out


def dump_flows(agent, state, worker: int | None = None, match: str | None = None) -> list[dict]:
    flows = _flows(agent, worker, _match(match))
    for f in flows:
        f["match"] = key_dict(f.pop("key"), f.pop("mask", None))
    return flows


def del_flows(agent, state, match: str | None = None) -> dict:
    ids = tuple(f["id"] for f in _flows(agent, None, _match(match)))
    n = agent.command([DP], lambda req: m.DelFlows(req, ids))[DP] if ids else 0
    return {"deleted": n}


def _flat(stats: dict) -> dict[str, int]:
    out = {f"datapath.{k}": v for k, v in stats["datapath"].items()}
    for i, w in enumerate(stats["workers"]):
        out.update({f"worker-{i}.{k}": v for k, v in w.items()})
    out.update({f"supervisor.{k}": v for k, v in stats["supervisor"].items()})
    return {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def stats(agent, state, rate: bool = False) -> dict:
    now, flat = time.monotonic(), _flat(agent.stats())
    last = state.get("stats")
    state["stats"] = (now, flat)
    if not rate:
        return flat
    if last is None:
        return {"interval_s": None, "rates": {}}
    dt = max(now - last[0], 1e-6)
    return {"interval_s": round(dt, 3),
            "rates": {k: round((v - last[1].get(k, 0)) / dt, 2) for k, v in flat.items() if v != last[1].get(k, 0)}}


def workers(agent, state) -> list[dict]:
    st = agent.stats()
    rows = []
    for i, child in sorted(agent.children().items()):
        c = st["datapath"] if i == DP else st["workers"][i]
        cpu = c.get("worker_cpu", -1) if i != DP else agent.cfg.datapath_cpu
        rows.append({**child, "index": i, "core": None if cpu in (None, -1) else cpu,
                     "inbox": None if i == DP else st["datapath"].get(f"dispatcher_inflight_{i}"),
                     "flows": c.get("datapath_flows") if i == DP else c.get("worker_flows")})
    return rows


def health(agent, state) -> dict:
    h = agent.health()
    return {**h, "alive": {str(k): v for k, v in h["alive"].items()}, "pids": {str(k): v for k, v in h["pids"].items()},
            "crashes": {str(k): v for k, v in h.get("crashes", {}).items()}, "ok": all(h["alive"].values())}


def trace(agent, state, port: str, spec: str, timeout: float = 2.0) -> dict:
    """Simulated by the worker the dispatcher would pick, against its live state, without side effects.  A
    trace that parks on a topology fragment the worker did not hold yet is asked again once it arrived."""
    try:
        pkt = parse_spec(spec)
    except SpecError as e:
        raise CtlError(f"packet spec: {e}") from None
    cfg = agent.cfg
    pinned = (cfg.port_workers or {}).get(port)
    w = (pinned if pinned is not None else normalized_flow_hash(pkt)) % cfg.workers
    frame = build(pkt)
    deadline = time.monotonic() + timeout
    while True:
        out = agent.command([w], lambda req: m.TraceRequest(req, port, frame))[w]
        needs = out.get("needs") or {}
        if out.get("result") != "parked" or needs.get("type") != "NeedFragment" or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def flow_state(agent, state, match: str | None = None) -> list[dict]:
    want = _match(match)
    names = {"ip_src": 0, "ip_dst": 1, "proto": 2, "tp_src": 3, "tp_dst": 4}
    rows = []
    for w in range(agent.cfg.workers):
        for kind, key, value, expires in state_entries(agent, w):
            if any(not field_matches(v, key[names[k]]) for k, v in want.items() if k in names):
                continue
            rows.append({"worker": w, "kind": kind, "key": tags.key_str(tuple(key)),
                         "binding": None if value is None else binding_str(value),
                         "expires_at": expires})
    return rows


def state_entries(agent, worker: int):
    """A worker's flow-state entries, page by page (DumpStatePage: every answer stays far under the 4 MiB cap,
    and the worker serves upcalls between pages)."""
    cursor = 0
    while True:
        page = agent.command([worker], lambda req, at=cursor: m.DumpStatePage(req, at, m.MAX_STATE_PAGE))[worker]
        if "error" in page:
            raise CtlError(f"worker {worker}: {page['error']}")
        yield from page["entries"]
        cursor = page["cursor"]
        if not cursor:
            return


def _table(agent, kind: str, device: str) -> dict:
    return agent.command(range(agent.cfg.workers), lambda req: m.DumpTable(req, kind, device))


def mac_table(agent, state, bridge: str) -> list[dict]:
    return [{"worker": w, "vlan": vlan, "mac": int2mac(mac), "port": port, "age_s": age}
            for w, rows in sorted(_table(agent, "mac", bridge).items()) for vlan, mac, port, age in rows]


def arp_table(agent, state, router: str) -> list[dict]:
    return [{"worker": w, "ip": ip_text(ip), "mac": int2mac(mac), "age_s": age}
            for w, rows in sorted(_table(agent, "arp", router).items()) for ip, mac, age in rows]


def leases(agent, state) -> list[dict]:
    held = agent.allocator.held() if agent.allocator is not None else {}
    return [{"device": k[0], "ip": ip_text(k[1]), "block": k[2], "ports": f"{k[2]}-{k[2] + 63}", "owner": owner}
            for k, owner in sorted(held.items())]


def log_level(agent, state, level: str, process: str = "all") -> dict:
    if str(level).upper() not in LEVELS:
        raise CtlError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    n = agent.cfg.workers
    targets = {"all": [DP, *range(n)], "datapath": [DP], "workers": list(range(n)), "supervisor": []}.get(process)
    if targets is None:
        if process.startswith("worker-") and process[7:].isdigit() and int(process[7:]) < n:
            targets = [int(process[7:])]
        else:
            raise CtlError(f"unknown process {process!r} (all, supervisor, datapath, workers, worker-N)")
    out = {}
    if process in ("all", "supervisor"):
        out["supervisor"] = agent.set_log_level(level)["level"]
    for i, body in agent.command(targets, lambda req: m.SetLogLevel(req, level)).items():
        out["datapath" if i == DP else f"worker-{i}"] = body.get("level", body.get("error"))
    return out


COMMANDS = {"dump-flows": dump_flows, "del-flows": del_flows, "stats": stats, "workers": workers, "health": health,
            "trace": trace, "flow-state": flow_state, "mac-table": mac_table, "arp-table": arp_table,
            "leases": leases, "log-level": log_level}
