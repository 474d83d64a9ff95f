"""``[database]``: which PostgreSQL, or where the embedded cluster lives."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EMBEDDED_PORT = 54329
DEFAULT_POOL_SIZE = 10


@dataclass(frozen=True)
class DatabaseSettings:
    # Empty: run an embedded PostgreSQL cluster under <data_dir>/postgres.
    url: str = ""
    embedded_port: int = DEFAULT_EMBEDDED_PORT
    # Where initdb/pg_ctl live; empty: `pg_config --bindir`, then PATH, then /usr/lib/postgresql/*/bin.
    pg_bindir: str = ""
    # Connections of each of the service's pools (the gateway's, the review service's).
    pool_size: int = DEFAULT_POOL_SIZE
    # Waiting for a free connection of one of them gives up after this long.
    acquire_timeout: float = 10.0


# A node silent this long is dead: its sessions may move to other nodes.
DEFAULT_DEAD_AFTER = 30.0


@dataclass(frozen=True)
class NodeSettings:
    """``[node]``: the machine's share of the work (orchestrator.db.nodes)."""

    # Empty: derived from the host and the data directory, as the worker id is.
    id: str = ""
    dead_after: float = DEFAULT_DEAD_AFTER

    def __post_init__(self) -> None:
        if self.dead_after <= 0:
            raise ValueError("node.dead_after must be positive")
