"""`shardnet ctl`: the client of a running agent's control socket (engine/ctl.py), for humans and scripts.

    shardnet ctl [--ctl PATH | --host NAME] [--json] COMMAND [ARGS]

Human tables by default, the raw JSON answer with ``--json``; ``trace`` prints the JSON line of CONTRACTS §3 as
``shardnet trace`` does.  Exit status: 0, 1 when the agent answered with an error, 2 when it cannot be reached
or the arguments are wrong.
"""

from __future__ import annotations

import json
import socket
import sys

from engine.config import AgentConfig
from engine.ctl import pointer_path
from packet.flowkey import field_text


class CtlUnreachable(OSError):
    pass


def add_ctl_parser(sub) -> None:
    c = sub.add_parser("ctl", help="ask a running agent (flows, counters, live trace, tables, log level)")
    where = c.add_mutually_exclusive_group()
    where.add_argument("--ctl", metavar="PATH", help="the agent's control socket")
    where.add_argument("--host", metavar="NAME", help="the agent of host NAME (its socket from its pointer file)")
    c.add_argument("--json", action="store_true", help="print the JSON answer")
    cmds = c.add_subparsers(dest="ctl_command", required=True)
    d = cmds.add_parser("dump-flows", help="the datapath's flows")
    d.add_argument("--worker", type=int)
    d.add_argument("--match", metavar="SPEC", help="packet-spec fields (and in_port=PORT) the key must have")
    cmds.add_parser("del-flows", help="delete flows").add_argument("--match", metavar="SPEC")
    cmds.add_parser("stats", help="every counter of every process").add_argument(
        "--rate", action="store_true", help="per-second rates since the previous stats call")
    cmds.add_parser("workers", help="the processes: pid, core, CPU, inbox, restarts, crashes, last crash")
    cmds.add_parser("health", help="are all processes alive")
    t = cmds.add_parser("trace", help="trace a packet against the live state, without side effects")
    t.add_argument("port")
    t.add_argument("spec")
    cmds.add_parser("flow-state", help="conntrack and NAT entries").add_argument("--match", metavar="SPEC")
    cmds.add_parser("mac-table", help="a bridge's MAC table, per worker").add_argument("bridge")
    cmds.add_parser("arp-table", help="a router's ARP table, per worker").add_argument("router")
    cmds.add_parser("leases", help="the SNAT port blocks this agent holds")
    lv = cmds.add_parser("log-level", help="set the log level: log-level [PROCESS] LEVEL")
    lv.add_argument("words", nargs="+", metavar="[PROCESS] LEVEL")
    c.set_defaults(func=cmd_ctl)


def socket_path(ctl: str | None, host: str | None) -> str:
    if ctl:
        return ctl
    if not host:
        raise CtlUnreachable("give --ctl PATH or --host NAME")
    pointer = pointer_path(AgentConfig(host=host, workers=1, cpus=[0]))
    try:
        with open(pointer) as f:
            return f.read().strip()
    except OSError:
        raise CtlUnreachable(f"no running agent for host {host!r} ({pointer} not found)") from None


def request(path: str, cmd: str, args: dict | None = None, timeout: float = 30.0) -> dict:
    """One request on the control socket; the decoded answer ({"ok": ..., "result"|"error": ...})."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        parts: list[bytes] = []                       # a large table is megabytes: no quadratic +=
        while not parts or not parts[-1].endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            parts.append(chunk)
        buf = b"".join(parts)
    except OSError as e:
        raise CtlUnreachable(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    return json.loads(buf)


def _args(a) -> dict:
    c = a.ctl_command
    if c == "dump-flows":
        return {"worker": a.worker, "match": a.match}
    if c in ("del-flows", "flow-state"):
        return {"match": a.match}
    if c == "stats":
        return {"rate": a.rate}
    if c == "trace":
        return {"port": a.port, "spec": a.spec}
    if c == "mac-table":
        return {"bridge": a.bridge}
    if c == "arp-table":
        return {"router": a.router}
    if c == "log-level":
        if len(a.words) > 2:
            raise ValueError("log-level [PROCESS] LEVEL")
        return {"level": a.words[-1], "process": a.words[0] if len(a.words) == 2 else "all"}
    return {}


def cmd_ctl(a) -> int:
    try:
        args = _args(a)
        answer = request(socket_path(a.ctl, a.host), a.ctl_command, args)
    except (ValueError, CtlUnreachable) as e:          # bad arguments, or no agent there
        print(f"shardnet ctl: {e}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"shardnet ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer["result"]
    if a.json or a.ctl_command == "trace":
        print(json.dumps(result, separators=(", ", ": ")))
    else:
        print(render(a.ctl_command, result))
    return 0


def _cell(v) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}={_cell(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return " ".join(_cell(x) if not isinstance(x, (list, tuple)) else "(" + ",".join(map(str, x)) + ")"
                        for x in v)
    return "-" if v is None else str(v)


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width, strict=True)).rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, width, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _action(a: list) -> str:
    if a[0] == "set":
        return f"set:{a[1]}={field_text(a[1], a[2])}"
    if a[0] == "tunnel":
        return f"tunnel:{field_text('ip_dst', a[1])}/key={a[2]}"
    return ":".join(map(str, a))


def flow_line(f: dict) -> str:
    """One flow, OVS dump-flows style."""
    idle = "-" if f["idle_left_s"] is None else f"{f['idle_left_s']}s"
    match = ",".join(f"{k}={v:#06x}" if k == "eth_type" else f"{k}={v}" for k, v in f["match"].items())
    return (f"id={f['id']} worker={f['worker']} hits={f['hits']} age={f['age_s']}s idle_left={idle} {match} "
            f"actions={','.join(map(_action, f['actions']))}")


def render(cmd: str, result) -> str:
    if cmd == "dump-flows":
        return "\n".join(map(flow_line, result)) or "(none)"
    if cmd == "stats":
        if "rates" in result:
            rates = result["rates"]
            return "\n".join(f"{k:60} {v:>12}/s" for k, v in sorted(rates.items())) or "(no change)"
        return "\n".join(f"{k:60} {v:>12}" for k, v in sorted(result.items()))
    if cmd == "workers":
        return table(result, ["name", "pid", "alive", "core", "cpu_s", "inbox", "flows", "restarts", "crashes",
                              "last_exit"])
    if isinstance(result, list):
        return table(result)
    if isinstance(result, dict):
        return "\n".join(f"{k:24} {_cell(v)}" for k, v in result.items())
    return str(result)

