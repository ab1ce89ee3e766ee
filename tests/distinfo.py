"""Make this tree's entry points visible to importlib.metadata without installing it.

``write_dist_info(target)`` writes ``target/shardnet-<version>.dist-info`` (METADATA and entry_points.txt)
from pyproject.toml, so a process with ``target`` first on its ``PYTHONPATH`` sees the entry points this
checkout declares, even when the environment holds an older install of shardnet (importlib.metadata takes the
first distribution of a name on sys.path).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_dist_info(target: Path) -> Path:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    d = target / f"{project['name']}-{project['version']}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    (d / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items()) + "\n"
        for group, eps in groups.items()))
    return d


def env_with_dist_info(target: Path) -> dict[str, str]:
    """os.environ with ``target`` (holding a dist-info) and this tree first on PYTHONPATH."""
    write_dist_info(target)
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT), *([rest] if rest else [])])}
