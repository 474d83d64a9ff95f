"""The orchestrator: Switchyard's application, in layers that import only downwards.

    app/        configuration, the CLI, ``switchyard up``: wires everything
    services/   tasks, projects, review, agents: what the CLI and the gateway call
    dispatch/   the engine: claim, run a turn, finalize
    db/         which database, migrations, the embedded cluster

Below all of them: kernel (shared by every package), backends, worktrees, ws_gateway.
"""

from __future__ import annotations
