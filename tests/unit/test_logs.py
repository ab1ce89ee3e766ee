"""engine/logs.py: one setup per process, repeated messages collapsed, the level changed at run time."""

from __future__ import annotations

import logging
import time

import pytest

from engine import logs


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Sink:
    """Stands in for the handler's emit: the lines that would be written."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def record(msg: str, *args, name: str = "kazoo.client", level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.fixture
def collapse():
    clock, sink = Clock(), Sink()
    f = logs.Collapse(sink, repeat_s=10.0, clock=clock)
    yield f, clock, sink
    f.cancel()


def test_a_repeated_message_shows_once_then_its_count_once_per_interval(collapse):
    f, clock, sink = collapse
    msg = "Connection dropped: socket connection error: %s"
    passed = [f.filter(record(msg, "Connection refused")) for _ in range(200)]
    assert passed == [True] + [False] * 199 and sink.lines == []
    clock.t += 10.0
    f.flush()
    assert sink.lines == ["Connection dropped: socket connection error: Connection refused … repeated 199 times"]
    for _ in range(5):                                 # still failing: one count line per interval
        clock.t += 1.0
        assert not f.filter(record(msg, "Connection refused"))
    clock.t += 10.0
    f.flush()
    assert sink.lines[1].endswith("… repeated 5 times")
    clock.t += 10.0                                    # nothing repeated in that interval: forgotten
    f.flush()
    assert len(sink.lines) == 2
    assert f.filter(record(msg, "Connection refused"))  # and shown in full again


def test_the_next_repeat_after_the_interval_reports_it_when_no_timer_did(collapse):
    f, clock, sink = collapse
    assert f.filter(record("x"))
    assert not f.filter(record("x"))
    clock.t += 11.0
    assert not f.filter(record("x"))                   # reports the last interval, opens the next with itself
    assert sink.lines == ["x … repeated 1 times"]


def test_different_messages_loggers_and_levels_are_not_collapsed(collapse):
    f, clock, sink = collapse
    assert f.filter(record("Connecting to %s", "127.0.0.1:2181"))
    assert f.filter(record("Connecting to %s", "127.0.0.1:2182"))           # alternating ensemble members
    assert f.filter(record("Connecting to %s", "127.0.0.1:2181", name="other"))
    assert f.filter(record("Connecting to %s", "127.0.0.1:2181", level=logging.INFO))
    assert not f.filter(record("Connecting to %s", "127.0.0.1:2182"))


def test_the_timer_reports_an_interval_without_being_asked():
    sink = Sink()
    f = logs.Collapse(sink, repeat_s=0.1)
    try:
        f.filter(record("refused"))
        f.filter(record("refused"))
        f.filter(record("refused"))
        deadline = time.monotonic() + 5
        while not sink.lines and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.lines == ["refused … repeated 2 times"]
    finally:
        f.cancel()


def test_every_gates_a_line_per_key_per_interval():
    gate = logs.Every(10.0)
    assert gate.due("auth", 0.0) and not gate.due("auth", 5.0) and gate.due("replay", 5.0)
    assert gate.due("auth", 10.0)


@pytest.fixture
def root_logger():
    """Our setup changes the root logger: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    logs.remove()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_writes_every_logger_to_the_file_with_the_role(root_logger, tmp_path):
    path = tmp_path / "agent.log"
    assert logs.setup("worker-1", "info", str(path), repeat_s=10.0)
    logging.getLogger("engine.pool").warning("worker %d died", 1)
    for _ in range(50):
        logging.getLogger("kazoo.client").warning("Connection dropped: socket connection error: refused")
    logging.getLogger("engine.pool").debug("not at INFO")
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert "shardnet[worker-1] WARNING engine.pool: worker 1 died" in lines[0]
    assert "kazoo.client: Connection dropped" in lines[1]
    # a second setup replaces ours (one handler of ours at a time)
    assert logs.setup("worker-1", "DEBUG", str(path))
    assert sum(getattr(h, "shardnet", False) for h in root_logger.handlers) == 1


def test_an_embedding_programs_logging_is_left_alone_unless_a_file_is_asked_for(root_logger, tmp_path):
    root_logger.addHandler(logging.NullHandler())
    before = list(root_logger.handlers)
    assert not logs.setup("supervisor", "INFO", None, force=False)
    assert root_logger.handlers == before
    assert logs.setup("supervisor", "INFO", str(tmp_path / "a.log"), force=False)


def test_set_level_returns_the_previous_one_and_refuses_unknown_names(root_logger):
    logs.setup("datapath", "INFO")
    assert logs.set_level("debug") == {"level": "DEBUG", "previous": "INFO"}
    assert logging.getLogger("kazoo.client").isEnabledFor(logging.DEBUG)
    assert logs.set_level("WARN") == {"level": "WARNING", "previous": "DEBUG"}
    with pytest.raises(ValueError, match="unknown log level"):
        logs.set_level("loud")
    assert logging.getLogger().level == logging.WARNING


def test_the_config_checks_the_level_and_the_metrics_address():
    from engine.config import AgentConfig, ConfigError, metrics_address

    assert AgentConfig(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ConfigError, match="log_level"):
        AgentConfig(log_level="chatty")
    assert metrics_address("9100") == ("127.0.0.1", 9100)
    assert metrics_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert metrics_address("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match="metrics"):
        AgentConfig(metrics="localhost:http")
    with pytest.raises(ConfigError, match="metrics"):
        AgentConfig(metrics="70000")
