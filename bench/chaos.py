"""The chaos soak at full size (testkit.chaos): prints its report as JSON, exits 1 unless every count is 0.

    python bench/chaos.py [--turns N] [--sessions N] [--clients N] [--keep-logs DIR]

3 dispatchers and 2 gateways on one PostgreSQL; by default 1,000 turns over 100 sessions (noop,
native against the fake model, warm opencode), 50 WebSocket clients; dispatchers killed -9 and
restarted, PostgreSQL restarted 3 times, opencode servers killed, connections dropped and
dispatchers partitioned through pausable proxies.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import anyio

from testkit.chaos import ChaosConfig, run_soak


def main() -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=defaults.turns)
    parser.add_argument("--sessions", type=int, default=defaults.sessions)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--submit-rate", type=float, default=defaults.submit_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--keep-logs", type=Path, help="copy every process's stderr here")
    args = parser.parse_args()
    config = dataclasses.replace(
        defaults,
        turns=args.turns,
        sessions=args.sessions,
        clients=args.clients,
        submit_rate=args.submit_rate,
        seed=args.seed,
    )
    report = anyio.run(run_soak, config, args.keep_logs)
    print(report.to_json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
