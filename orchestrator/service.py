"""``switchyard up``: the database, the dispatcher and the WebSocket gateway in one process.

SIGTERM or SIGINT starts a graceful stop: the dispatcher stops claiming and gives running
turns a grace period, then everything closes and an embedded cluster is stopped.
"""

from __future__ import annotations

import signal
from typing import TextIO

import anyio

from orchestrator import db
from orchestrator.config import Config
from orchestrator.database import database_url
from orchestrator.logs import get_logger, redact

log = get_logger("service")


async def run_service(config: Config, out: TextIO) -> None:
    async with database_url(config, own_cluster=True) as url:
        conn = await db.connect(url)
        try:
            version = await db.migrate(conn)
        finally:
            await conn.close()
        log.info("service.start", database=redact(url), schema_version=version)
        print(f"Switchyard is up.\n  database: {url}", file=out)
        print(
            "  submit a task: psql '<database>' -c "
            "\"INSERT INTO tasks (project_id, input) VALUES (1, 'Explain this repository')\"",
            file=out,
        )
        out.flush()
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("service.stopping", signal=signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    break
    log.info("service.stop")
