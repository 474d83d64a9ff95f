"""Debian's Chromium for Playwright (its own browser download is not reachable here).

Headless, no sandbox (we run as root), and none of the background traffic a closed network refuses.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
