"""Small hardenings (issue 12, item 5): the state file, config range checks, hostile topology files."""

from __future__ import annotations

import os
import stat

import pytest

from backchannel import messages as m
from engine import statefile


# -- the state file ---------------------------------------------------------------------------------------
def _entries(n: int = 3) -> list:
    return [m.FlowStateEntry("conntrack", (1, 2, 6, 1000 + i, 80, "tenant"), None, 50.0) for i in range(n)]


def test_the_state_file_is_written_atomically_with_mode_0600(tmp_path):
    path = tmp_path / "state" / "host-a.state"
    statefile.write_state(str(path), _entries())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700     # a directory it creates is private
    assert statefile.read_state(str(path)).entries == tuple(_entries())
    assert os.listdir(path.parent) == ["host-a.state"]            # no temporary file left behind


def test_a_looser_existing_file_is_replaced_by_a_0600_one(tmp_path):
    path = tmp_path / "host-a.state"
    path.write_bytes(b"old")
    path.chmod(0o644)
    statefile.write_state(str(path), _entries(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(statefile.read_state(str(path)).entries) == 1


def test_a_planted_temp_name_is_not_followed(tmp_path):
    # the old code wrote "<path>.tmp": a symlink planted there redirected the write
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "host-a.state"
    os.symlink(victim, f"{path}.tmp")
    statefile.write_state(str(path), _entries())
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink() and len(statefile.read_state(str(path)).entries) == 3


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "host-a.state"
    statefile.write_state(str(path), _entries(2))

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", fail)
    with pytest.raises(OSError):
        statefile.write_state(str(path), _entries(5))
    assert os.listdir(tmp_path) == ["host-a.state"]
    assert len(statefile.read_state(str(path)).entries) == 2


def test_two_writers_use_distinct_temporary_names(tmp_path, monkeypatch):
    names = []
    real = statefile.os.replace
    monkeypatch.setattr(statefile.os, "replace", lambda src, dst: (names.append(src), real(src, dst)))
    for _ in range(2):
        statefile.write_state(str(tmp_path / "s"), _entries(1))
    assert len(set(names)) == 2 and all(os.path.dirname(n) == str(tmp_path) for n in names)
