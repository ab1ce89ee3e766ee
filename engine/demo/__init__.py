"""The shipped demo: its topology, the packets ``shardnet trace --demo`` traces, and (traffic.py) the synthetic
traffic ``shardnet run --demo`` drives.  Paths only here, so the CLI modules need not import each other."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_TOPOLOGY = DEMO_DIR / "demo.yaml"
DEMO_TRACE = DEMO_DIR / "demo.trace"
