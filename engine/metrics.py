"""The agent's Prometheus endpoint: ``--metrics HOST:PORT`` (AgentConfig.metrics) serves ``/metrics``.

Owns the HTTP server (prometheus_client's, on its own daemon thread) and a collector that reads the agent's
counters on each scrape (``Agent.stats()``: the datapath, every worker, the supervisor) and turns them into
series named ``shardnet_*``.  Nothing is kept between scrapes: every process keeps its own counters, so a
scrape is one stats round trip, and a restarted worker's counters start again from zero (Prometheus sees a
counter reset).

The series (labels ``process`` = datapath | worker | supervisor and ``worker`` = its index, "" otherwise):

  shardnet_up                              1 when every process answered the scrape
  shardnet_agent_info{host,store,datapath} 1
  shardnet_<counter>_total                 every counter of every process, by its own name (``datapath_hits``,
                                           ``worker_upcalls``, ``flows_installed``, ``dispatcher_queue_full``…)
  shardnet_drops_total{reason}             packets and datagrams dropped, by reason: the workers'
                                           ``worker_drops_<reason>`` and the datapath's admission, tunnel and
                                           flow-state refusals (``DATAPATH_DROPS``)
  shardnet_setup_latency_seconds           histogram: upcall queued → its answer back in the datapath
  shardnet_flows                           flows now: the datapath's cache, each worker's table
  shardnet_flow_state_entries              each worker's conntrack/NAT entries
  shardnet_parked_now                      each worker's parked simulations now (shardnet_parked_total: ever)
  shardnet_upcalls_in_flight               the datapath's unanswered upcalls
  shardnet_restarts_total                  restarts by the supervisor: of workers (process="supervisor"), of the
                                           datapath (process="datapath"); deaths: shardnet_supervisor_crashes_total
  shardnet_store_connected                 1 while the store session is connected
  shardnet_store_state{state}              1 for the current one of connected | suspended | lost

The pure part (``families``: stats → metric families) is what the tests check without a server.
"""

from __future__ import annotations

import logging
import re

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from engine.dpproc import LATENCY_BUCKETS_US

SCRAPE_TIMEOUT_S = 5.0
LABELS = ("process", "worker")
STORE_STATES = ("connected", "suspended", "lost")
# gauges: stats key → series (everything else that is a number is a counter)
GAUGES = {"datapath_flows": "flows", "worker_flows": "flows", "worker_state_entries": "flow_state_entries",
          "worker_parked_now": "parked_now", "datapath_inflight": "upcalls_in_flight",
          "supervisor_store_calls_in_flight": "store_calls_in_flight", "tables_unwritten_now": "table_writes_pending"}
# series of their own, not repeated as shardnet_<key>_total
SPECIAL = {"supervisor_worker_restarts", "supervisor_datapath_restarts", "supervisor_store_connected", "datapath_pid",
           "worker_pid",
           "worker_index"}
# the datapath's counters of dropped packets / datagrams → their reason in shardnet_drops_total
DATAPATH_DROPS = {"dispatcher_queue_full": "upcall_queue_full", "dispatcher_rate_limited": "upcall_rate_limited",
                  "dispatcher_held_overflow": "held_overflow", "dispatcher_send_full": "upcall_send_full",
                  "datapath_output_no_port": "output_no_port", "datapath_no_tunnel": "no_tunnel",
                  "datapath_tunnel_unknown_key": "tunnel_unknown_key",
                  "datapath_tunnel_refused_source": "tunnel_refused_source",
                  "afpacket_rx_dropped": "afpacket_rx_dropped"}
STATE_REFUSED = "datapath_state_refused_"
WORKER_DROPS = "worker_drops_"
HISTOGRAM = "datapath_setup_latency_"
# family names of the series above: a counter of the same name would make the exposition invalid
RESERVED = {"shardnet_up", "shardnet_agent_info", "shardnet_drops", "shardnet_setup_latency_seconds",
            "shardnet_restarts", "shardnet_store_connected", "shardnet_store_state",
            *(f"shardnet_{g}" for g in GAUGES.values())}
_BAD = re.compile(r"[^a-zA-Z0-9_]")
log = logging.getLogger(__name__)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def processes(stats: dict):
    """(process, worker label, counters) of every process in ``Agent.stats()``."""
    yield "datapath", "", stats.get("datapath") or {}
    for i, w in enumerate(stats.get("workers") or []):
        yield "worker", str(w.get("worker_index", i)), w or {}
    yield "supervisor", "", stats.get("supervisor") or {}


def drops(stats: dict) -> dict[tuple[str, str, str], int]:
    """(process, worker, reason) → dropped, for shardnet_drops_total and the status line."""
    out = {}
    for proc, worker, c in processes(stats):
        for k, v in c.items():
            if not _number(v):
                continue
            if k.startswith(WORKER_DROPS):
                reason = k[len(WORKER_DROPS):]
            elif k.startswith(STATE_REFUSED):
                reason = "state_refused_" + k[len(STATE_REFUSED):]
            elif k in DATAPATH_DROPS:
                reason = DATAPATH_DROPS[k]
            else:
                continue
            out[(proc, worker, reason)] = out.get((proc, worker, reason), 0) + v
    return out


def families(stats: dict, *, up: bool = True, store_state: str = "connected", info: dict | None = None) -> list:
    """The metric families of one scrape."""
    out = []
    g_up = GaugeMetricFamily("shardnet_up", "1 when every process of the agent answered this scrape")
    g_up.add_metric([], 1 if up else 0)
    out.append(g_up)
    if info is not None:
        g = GaugeMetricFamily("shardnet_agent_info", "the agent's settings", labels=sorted(info))
        g.add_metric([str(info[k]) for k in sorted(info)], 1)
        out.append(g)
    counters: dict[str, CounterMetricFamily] = {}
    gauges: dict[str, GaugeMetricFamily] = {}
    for proc, worker, c in processes(stats):
        for k, v in sorted(c.items()):
            if not _number(v) or k in SPECIAL or k.startswith(WORKER_DROPS) or k.startswith(HISTOGRAM):
                continue
            if k in GAUGES:
                name = "shardnet_" + GAUGES[k]
                fam = gauges.get(name)
                if fam is None:
                    fam = gauges[name] = GaugeMetricFamily(name, f"{GAUGES[k]} now", labels=LABELS)
            else:
                name = "shardnet_" + _BAD.sub("_", k)
                if name in RESERVED:
                    name += "_events"
                fam = counters.get(name)
                if fam is None:
                    fam = counters[name] = CounterMetricFamily(name, f"{k} (counter)", labels=LABELS)
            fam.add_metric([proc, worker], v)
    out.extend(gauges.values())
    out.extend(counters.values())
    d = CounterMetricFamily("shardnet_drops", "packets and datagrams dropped, by reason",
                            labels=(*LABELS, "reason"))
    for (proc, worker, reason), n in sorted(drops(stats).items()):
        d.add_metric([proc, worker, reason], n)
    out.append(d)
    hist = _histogram(stats.get("datapath") or {})
    if hist is not None:
        out.append(hist)
    sup = stats.get("supervisor") or {}
    r = CounterMetricFamily("shardnet_restarts", "worker processes restarted by the supervisor", labels=LABELS)
    r.add_metric(["supervisor", ""], sup.get("supervisor_worker_restarts", 0))
    r.add_metric(["datapath", ""], sup.get("supervisor_datapath_restarts", 0))
    out.append(r)
    connected = GaugeMetricFamily("shardnet_store_connected", "1 while the store session is connected")
    connected.add_metric([], 1 if store_state == "connected" else 0)
    out.append(connected)
    st = GaugeMetricFamily("shardnet_store_state", "the store session's state (1: current)", labels=["state"])
    for s in STORE_STATES:
        st.add_metric([s], 1 if s == store_state else 0)
    out.append(st)
    return out


def _histogram(dp: dict):
    count = dp.get(HISTOGRAM + "count")
    if count is None:
        return None
    buckets = [(floatToGoString(b / 1e6), dp.get(f"{HISTOGRAM}le_{b}", 0)) for b in LATENCY_BUCKETS_US]
    buckets.append(("+Inf", count))
    h = HistogramMetricFamily("shardnet_setup_latency_seconds",
                              "flow setup latency: upcall queued in the datapath to the worker's answer back there",
                              labels=LABELS)
    h.add_metric(["datapath", ""], buckets, dp.get(HISTOGRAM + "sum_us", 0) / 1e6)
    return h


class AgentCollector:
    """A prometheus_client collector over a running Agent: one ``stats()`` per scrape."""

    def __init__(self, agent, timeout: float = SCRAPE_TIMEOUT_S):
        self.agent, self.timeout = agent, timeout
        cfg = agent.cfg
        self.info = {"host": cfg.host or "", "store": cfg.store, "datapath": cfg.datapath,
                     "workers": cfg.workers}

    def collect(self):
        try:
            stats, up = self.agent.stats(timeout=self.timeout), True
        except Exception as e:                         # noqa: BLE001 - a scrape of a stopping agent says so
            log.warning("metrics scrape: the agent did not answer: %s", type(e).__name__)
            stats, up = {"supervisor": dict(self.agent.counters)}, False
        if up and not all(stats.get("workers") or [{}]):
            up = False
        yield from families(stats, up=up, store_state=self.agent.store_state, info=self.info)


class MetricsServer:
    """``/metrics`` of one agent on (host, port); port 0 picks a free one (``address`` says which)."""

    def __init__(self, agent, address: tuple[str, int]):
        self.agent, self.requested = agent, address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self._server = self._thread = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

    def start(self) -> MetricsServer:
        host, port = self.requested
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(2.0)
            self._server = None
