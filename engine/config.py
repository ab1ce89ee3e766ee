"""Agent configuration: one dataclass, from keyword arguments or a TOML file (``[agent]`` table or top level).

Unknown keys are errors that name the key; values are checked for type.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field, fields

from engine.logs import check_level


class ConfigError(ValueError):
    pass


@dataclass
class AgentConfig:
    workers: int = 2                       # simulation worker processes
    host: str | None = None                # this agent's host name (ports bound to it are local)
    store: str = "memory://"               # topology store URI
    topology: str | None = None            # a topology file written into the store at start (a diff)
    cpus: list[int] | None = None          # CPUs to pin workers to, round robin (default: all available)
    datapath_cpu: int | None = None        # pin the datapath process (default: not pinned)
    runtime_base: str | None = None        # where the private socket directory is made (default: tmp)
    park_timeout_s: float = 5.0
    max_parked: int = 10_000
    max_flows: int = 100_000
    flow_idle_s: float = 60.0
    flow_hard_s: float = 0.0
    drop_flow_s: float = 5.0               # lifetime of the temporary drop flows a worker installs
    flow_state_idle_s: float = 60.0
    arp_retry_s: float = 1.0
    arp_timeout_s: float = 5.0
    max_inflight: int = 4096               # upcalls in flight per worker (admission control)
    port_rate: float = 200_000.0           # upcalls/s per ingress port (token bucket)
    port_burst: float = 20_000.0
    batch: int = 64
    keep_outputs: bool = True              # in-memory datapath: keep output frames for inspection
    port_workers: dict | None = None       # ingress port id → worker index (pinned dispatch; default: hash)
    restart_workers: bool = True
    datapath: str = "memory"               # "memory" (synthetic ports, Inject) or "real" (interfaces, VXLAN)
    tunnel_port: int = 4789                # real: UDP port of the VXLAN endpoint (bound on the host's tunnel_ip)
    state_file: str | None = None          # real: flow-state snapshot file (default: see state_path)
    state_snapshot_s: float = 1.0          # real: how often the snapshot is written (0: never)
    flow_state_keys: list[str] | None = None   # real: hex keys of the flow-state tunnel (first signs); default:
                                           # the deployment's keys in the store (/secrets/flow-state-keys)
    ctl: str | None = None                 # the control socket (default: ctl.sock in the private runtime dir)
    start_timeout_s: float = 20.0
    metrics: str | None = None             # serve Prometheus text on HOST:PORT (or PORT: 127.0.0.1); off if None
    log_level: str = "INFO"                # every process's log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)
    log_file: str | None = None            # every process appends its log lines here (default: stderr)
    log_repeat_s: float = 10.0             # a repeated log message: one "… repeated N times" line per interval
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("workers: must be at least 1")
        if self.datapath not in ("memory", "real"):
            raise ConfigError(f"datapath: 'memory' or 'real', got {self.datapath!r}")
        if not 0 < self.tunnel_port < 65536:
            raise ConfigError(f"tunnel_port: 1..65535, got {self.tunnel_port!r}")
        try:
            self.log_level = logging.getLevelName(check_level(self.log_level))
        except ValueError as e:
            raise ConfigError(f"log_level: {e}") from None
        if self.metrics is not None:
            try:
                metrics_address(self.metrics)
            except ValueError as e:
                raise ConfigError(f"metrics: {e}") from None
        if self.cpus is None:
            self.cpus = sorted(os.sched_getaffinity(0))

    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.metrics is None else metrics_address(self.metrics)

    def state_path(self) -> str:
        """Where the flow-state snapshot lives: ``state_file``, else under ``runtime_base`` or
        $XDG_STATE_HOME / ~/.local/state."""
        if self.state_file:
            return self.state_file
        base = self.runtime_base or os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(base, "shardnet", f"{self.host or 'agent'}.state")

    def lease_owner(self, worker: int) -> str:
        """The owner name of worker ``worker``'s SNAT block leases in the store: ``<host>/worker-<i>``."""
        return f"{self.host or 'agent'}/worker-{worker}"

    @classmethod
    def from_toml(cls, path: str, **overrides) -> AgentConfig:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        data = data.get("agent", data)
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}}, source=path)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<config>") -> AgentConfig:
        known = {f.name: f for f in fields(cls)}
        for k, v in data.items():
            if k not in known:
                raise ConfigError(f"{source}: unknown key {k!r} (known: {', '.join(sorted(known))})")
            want = known[k].type
            if "float" in want and isinstance(v, int) and not isinstance(v, bool):
                continue
            if want.startswith("int") and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{source}: {k}: expected an integer, got {v!r}")
            if want.startswith("bool") and not isinstance(v, bool):
                raise ConfigError(f"{source}: {k}: expected true or false, got {v!r}")
        return cls(**data)


def metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (on 127.0.0.1) → (host, port); ValueError otherwise.  Port 0:
    any free port."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT or PORT, got {text!r}") from None
    if not 0 <= number < 65536:
        raise ValueError(f"port 0..65535, got {number}")
    return host, number
