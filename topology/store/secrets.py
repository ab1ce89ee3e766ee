"""The deployment's shared secrets in the coordination store: the flow-state tunnel keys.

Owns the node ``/secrets/flow-state-keys``: the hex keys, one per line, the first one signing (the others are
accepted while a new key is rolled out; engine/datapath/stateauth.py).  The first agent of a deployment that
finds no key creates one (32 random bytes); a create that loses the race reads the winner's.  An operator
rotates by writing "new\\nold", then, once every agent runs with it, "new".

An agent that has keys in its own configuration (``flow_state_keys``) does not read the store.  Whoever can
read this node can forge flow state: protect the store (ZooKeeper ACLs, a private network).
"""

from __future__ import annotations

import os

from topology.store.base import NodeExists, Store

KEYS_PATH = "/secrets/flow-state-keys"
KEY_BYTES = 32


class SecretsError(ValueError):
    pass


def parse_keys(text: str, where: str = KEYS_PATH) -> tuple[bytes, ...]:
    """Hex keys, one per line (or a list of strings); each at least 16 bytes."""
    lines = [ln.strip() for ln in (text.splitlines() if isinstance(text, str) else text)]
    keys = []
    for n, ln in enumerate(x for x in lines if x):
        try:
            k = bytes.fromhex(ln)
        except ValueError:
            raise SecretsError(f"{where}: key {n + 1}: not hex") from None
        if len(k) < 16:
            raise SecretsError(f"{where}: key {n + 1}: {len(k)} bytes, at least 16 needed")
        keys.append(k)
    if not keys:
        raise SecretsError(f"{where}: no key")
    return tuple(keys)


def flow_state_keys(store: Store) -> tuple[bytes, ...]:
    """The deployment's keys, created in the store when there are none yet."""
    try:
        store.ensure_path("/secrets")
        store.create(KEYS_PATH, os.urandom(KEY_BYTES).hex().encode())
    except NodeExists:
        pass
    data, _ = store.get(KEYS_PATH)
    return parse_keys(data.decode(errors="replace"))
