"""Agent configuration: one dataclass, from keyword arguments or a TOML file (``[agent]`` table or top level).

Unknown keys are errors that name the key; values are checked for type (TOML) and range (always, in
``__post_init__``: ``_LIMITS``), each error naming the key, so a bad value fails at start instead of deep inside a
child (``max_flows: 0`` used to raise StopIteration in a worker's flow table).
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from dataclasses import dataclass, fields

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
    max_flow_state: int = 300_000          # flow-state entries per worker, replicas included (see README: caps)
    max_macs_per_bridge: int = 4096        # learned MACs per bridge (beyond: not learned, flooded to)
    max_macs_per_port: int = 1024          # learned MACs per bridge port
    max_arps_per_router: int = 4096        # ARP entries per router
    megaflows: bool = True                 # flows match only the fields their decision read (false: exact match)
    replies_ahead: bool = True             # a TCP SYN's / echo request's setup also sets up its reply's flow
    walk_memo: bool = True                 # a new connection through a walk already made: no walk (workers.memo)
    snat_lease_ahead: int = 4              # SNAT port blocks a worker leases ahead per (device, ip): held unused
                                           # or asked for (0: lease only when a new connection finds no port)
    snat_low_ports: int = 32               # ... the next one is asked for when the free ports of its blocks fall
                                           # below this (or below two lease round trips at the recent rate)
    learn_rate: float = 20.0               # store writes of learned entries per second, per port (MAC) / router (ARP)
    learn_burst: float = 100.0             # ... and their burst
    arp_retry_s: float = 1.0
    arp_timeout_s: float = 5.0
    max_inflight: int = 4096               # upcalls in flight per worker (admission control)
    port_rate: float = 200_000.0           # upcalls/s per ingress port (token bucket)
    port_burst: float = 20_000.0
    max_held: int = 16                     # frames held back per flow while its first packet is simulated
    max_held_total: int = 16_384           # ... and in all, in the datapath (beyond either: dropped, counted)
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
    request_timeout_s: float = 10.0        # a command a child has not answered by then fails (RequestExpired)
    max_pending_requests: int = 1024       # commands waiting for answers at once (beyond: ServiceBusy)
    metrics: str | None = None             # serve Prometheus text on HOST:PORT (or PORT: 127.0.0.1); off if None
    log_level: str = "INFO"                # every process's log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)
    log_file: str | None = None            # every process appends its log lines here (default: stderr)
    log_repeat_s: float = 10.0             # a repeated log message: one "… repeated N times" line per interval
    poll_spin_us: int = 0                  # after work, busy-poll this long before blocking (0: off; pinned cores)
    keep_warm_ms: int = 0                  # idle this long: each process runs its setup path once on the last
                                           # upcall, changing nothing (0: off; costs CPU when idle)
    poll_spin_workers: bool = True         # ... in the workers too (false: only the datapath spins)
    datapath_nice: int = -10               # the datapath's nice value (ovs-ctl's for ovs-vswitchd): under overload
                                           # it gets the CPU before the workers (negative: needs root, else 0)
    worker_nice: int = 0                   # the workers' (and only theirs) nice value

    def __post_init__(self) -> None:
        for name, (lo, hi) in _LIMITS.items():
            _check_number(name, getattr(self, name), lo, hi)
        for name in ("store", "datapath"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}: expected a string, got {getattr(self, name)!r}")
        for name in ("host", "topology", "runtime_base", "state_file", "ctl", "log_file"):
            value = getattr(self, name)
            if name != "host" and isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
        for name in ("keep_outputs", "restart_workers", "megaflows", "replies_ahead", "walk_memo",
                     "poll_spin_workers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.datapath not in ("memory", "real"):
            raise ConfigError(f"datapath: 'memory' or 'real', got {self.datapath!r}")
        if self.flow_state_keys:                       # None or empty: the store's keys
            from topology.store.secrets import SecretsError, parse_keys

            if not isinstance(self.flow_state_keys, list | tuple) or not all(
                    isinstance(k, str) for k in self.flow_state_keys):
                raise ConfigError("flow_state_keys: expected a list of hex strings")
            try:
                parse_keys(self.flow_state_keys, "flow_state_keys")
            except SecretsError as e:
                raise ConfigError(str(e)) from None           # names the key's position, never its value
        if self.datapath_cpu is not None:
            _check_number("datapath_cpu", self.datapath_cpu, 0, MAX_CPU)
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
        if not isinstance(self.cpus, list | tuple) or not self.cpus:
            raise ConfigError(f"cpus: expected a non-empty list of CPU numbers, got {self.cpus!r}")
        for cpu in self.cpus:
            _check_number("cpus", cpu, 0, MAX_CPU)
        if self.port_workers is not None:
            if not isinstance(self.port_workers, dict):
                raise ConfigError(f"port_workers: expected a table of port id = worker, got {self.port_workers!r}")
            for port, w in self.port_workers.items():
                if not isinstance(port, str) or not port:
                    raise ConfigError(f"port_workers: port ids are non-empty strings, got {port!r}")
                _check_number(f"port_workers.{port}", w, 0, self.workers - 1)

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
        """A config from parsed data; every error names ``source`` and the key."""
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
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


MAX_CPU = 4095
_FOREVER = 7 * 86400.0                 # no timeout or period is longer than a week
_BIG = 1 << 40                         # no count is larger

# field → (minimum, maximum), both inclusive; a float minimum of 0.0 given as (0.0, ...) allows 0, while
# ``_POSITIVE`` (a tiny positive number) means "more than 0"
_POSITIVE = 1e-9
_LIMITS: dict[str, tuple[float, float]] = {
    "workers": (1, 256),
    "park_timeout_s": (_POSITIVE, _FOREVER),
    "max_parked": (1, _BIG),
    "max_flows": (1, _BIG),
    "flow_idle_s": (0.0, _FOREVER),                 # 0: never idle-expired
    "flow_hard_s": (0.0, _FOREVER),                 # 0: no hard timeout
    "drop_flow_s": (_POSITIVE, _FOREVER),
    "flow_state_idle_s": (_POSITIVE, _FOREVER),
    "max_flow_state": (1, _BIG),
    "max_macs_per_bridge": (1, _BIG),
    "max_macs_per_port": (1, _BIG),
    "max_arps_per_router": (1, _BIG),
    "snat_lease_ahead": (0, 16),                    # blocks of 64 ports; 0: off (a park asks, as before)
    "snat_low_ports": (1, 1024),                    # free ports; what it asks is capped at snat_lease_ahead blocks
    "learn_rate": (_POSITIVE, 1e9),
    "learn_burst": (1.0, 1e9),
    "arp_retry_s": (_POSITIVE, _FOREVER),
    "arp_timeout_s": (_POSITIVE, _FOREVER),
    "max_inflight": (1, _BIG),
    "port_rate": (_POSITIVE, 1e12),
    "port_burst": (1.0, 1e12),
    "max_held": (0, _BIG),                          # 0: no frame is held back (dropped while one is in flight)
    "max_held_total": (0, _BIG),
    "batch": (1, 65_536),
    "tunnel_port": (1, 65_535),
    "state_snapshot_s": (0.0, _FOREVER),            # 0: never
    "start_timeout_s": (_POSITIVE, _FOREVER),
    "request_timeout_s": (_POSITIVE, _FOREVER),
    "max_pending_requests": (1, _BIG),
    "log_repeat_s": (0.0, _FOREVER),
    "poll_spin_us": (0, 10_000),                    # 0: never spin; at most 10 ms of spinning per round
    "keep_warm_ms": (0, 1000),                      # 0: off
    "datapath_nice": (-20, 19),                     # setpriority(2)'s range
    "worker_nice": (-20, 19),
}


def _check_number(name: str, value: object, lo: float, hi: float) -> None:
    """``value`` is a number in [lo, hi] (an integer when both bounds are integers), else ConfigError naming
    ``name``."""
    integral = isinstance(lo, int) and isinstance(hi, int)
    if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
        raise ConfigError(f"{name}: expected {'an integer' if integral else 'a number'}, got {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        if lo == _POSITIVE:
            want = f"more than 0 and at most {hi:g}"
        else:
            want = f"{lo:g}..{hi:g}" if hi < _BIG else f"at least {lo:g}"
        raise ConfigError(f"{name}: must be {want}, got {value!r}")


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
