"""``python -m orchestrator``: the ``switchyard`` command line."""

from __future__ import annotations

import sys

from orchestrator.app.cli import main

sys.exit(main())
