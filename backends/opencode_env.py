"""The environment that runs the real ``opencode`` binary offline and isolated.

Every track that starts opencode (``opencode acp``, ``opencode run`` in a PTY, ``opencode serve``)
uses :func:`opencode_env`: HOME and the XDG directories live in a per-run sandbox, the
self-update/model-catalogue/LSP/plugin downloads are switched off, and the whole config is passed
inline (``OPENCODE_CONFIG_CONTENT``) with a single OpenAI-compatible provider enabled. Only a
small allowlist of the parent environment is passed on, so secrets do not leak to the agent.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import OpencodeNotFoundError
from backends.warmup import WARMUP_MODEL, WARMUP_PROVIDER, warmup_model_ref

DEFAULT_PROVIDER_ID = "local"
DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
DEFAULT_MODELS: tuple[str, ...] = ("local-model",)
DEFAULT_PERMISSION = "allow"
DEFAULT_CONTEXT_LIMIT = 32768
DEFAULT_OUTPUT_LIMIT = 4096

# Relative to the project root (the directory holding the ``backends`` package); `make tools` puts
# the pinned opencode there.
PINNED_BINARY = Path(".tools/node_modules/.bin/opencode")

# Variables of the parent environment an agent may see; everything else (tokens, database URLs,
# cloud credentials) is dropped.
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SHELL", "USER", "LOGNAME", "TMPDIR")

OFFLINE_FLAGS = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    # A repository's own opencode.json / .opencode/ could add plugins or MCP servers that run code
    # outside our permission policy; only the configuration Switchyard passes applies.
    "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
    # opencode installs @opencode-ai/plugin into every config directory (npm, in the background) on
    # each start; offline mode makes that fail at once from the empty cache instead of going online.
    "npm_config_offline": "true",
}

# Sandbox subdirectories for HOME and the XDG base directories (opencode keeps its SQLite database,
# logs and snapshots under XDG_DATA_HOME/opencode).
SANDBOX_DIRS = {
    "HOME": "home",
    "XDG_CONFIG_HOME": "config",
    "XDG_DATA_HOME": "data",
    "XDG_CACHE_HOME": "cache",
    "XDG_STATE_HOME": "state",
}


@dataclass(frozen=True)
class OpencodeSettings:
    """How opencode reaches its model, and what it may do without asking."""

    base_url: str = DEFAULT_BASE_URL
    # The first model is the default; all of them can be chosen per task as ``<provider_id>/<model>``.
    models: tuple[str, ...] = DEFAULT_MODELS
    # Title generation model; None means the default model.
    small_model: str | None = None
    provider_id: str = DEFAULT_PROVIDER_ID
    # Name of the environment variable that holds the API key; None sends no key.
    api_key_env: str | None = None
    # opencode's ``permission`` config: "allow" | "ask" | "deny", or a per-tool mapping. Writing
    # outside the working directory is denied unless the mapping sets ``external_directory``.
    permission: str | Mapping[str, Any] = DEFAULT_PERMISSION
    context_limit: int = DEFAULT_CONTEXT_LIMIT
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    # Configured executable (path or name on PATH); None means PATH, then the pinned .tools copy.
    binary: str | None = None
    # The question tool (the model asks its user): only where a person can answer it (the warm
    # servers with ``[permissions] questions = "ask"``); unattended it would block the turn.
    questions: bool = False

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("OpencodeSettings.models must name at least one model")

    def model_ref(self, model: str | None = None) -> str:
        """``<provider>/<model>``, the form opencode's ``--model`` flag and config expect."""
        return f"{self.provider_id}/{model or self.models[0]}"


def opencode_config(settings: OpencodeSettings, warmup_url: str | None = None) -> dict[str, Any]:
    """The inline opencode config: one provider, no sharing, no updates, no ``question`` tool
    unless ``settings.questions``, no undo snapshots. With ``warmup_url`` (a pre-started agent's,
    backends.warmup) a second provider whose one model is refused there, which is also the small
    model (the session titles Switchyard never shows, so a warm-up prompt's title costs the user's
    model nothing either)."""
    models = dict.fromkeys(settings.models)
    if settings.small_model:
        models[settings.small_model] = None
    options: dict[str, Any] = {"baseURL": settings.base_url}
    if settings.api_key_env:
        options["apiKey"] = "{env:" + settings.api_key_env + "}"
    providers = {
        settings.provider_id: {
            "npm": "@ai-sdk/openai-compatible",
            "name": settings.provider_id,
            "options": options,
            "models": {
                name: {
                    "name": name,
                    "tool_call": True,
                    "reasoning": True,
                    "limit": {"context": settings.context_limit, "output": settings.output_limit},
                }
                for name in models
            },
        }
    }
    small_model = settings.model_ref(settings.small_model)
    if warmup_url is not None:
        providers[WARMUP_PROVIDER] = {
            "npm": "@ai-sdk/openai-compatible",
            "name": WARMUP_PROVIDER,
            "options": {"baseURL": warmup_url},
            "models": {WARMUP_MODEL: {"name": WARMUP_MODEL, "tool_call": True}},
        }
        small_model = warmup_model_ref()
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "enabled_providers": list(providers),
        "model": settings.model_ref(),
        "small_model": small_model,
        "permission": permission_rules(settings.permission),
        # Unattended runs: the question tool would block the turn waiting for a human.
        "tools": {"question": settings.questions},
        # opencode's own undo snapshots: a git repository per directory, filled with the whole
        # worktree before the first step of every turn (seconds on a large repository, and on every
        # one-shot turn). Switchyard snapshots the worktree itself and never uses opencode's.
        "snapshot": False,
        "provider": providers,
    }


def permission_rules(permission: str | Mapping[str, Any]) -> dict[str, Any]:
    """opencode's permission object, ordered so that agents stay inside their directory.

    opencode turns the object into rules in key order and applies the last one that matches, so
    ``"allow"`` alone (or ``"*"`` listed after ``external_directory``) lets the agent write anywhere.
    The catch-all goes first and ``external_directory`` (default ``deny``) last.
    """
    rules = {"*": permission} if isinstance(permission, str) else dict(permission)
    ordered = {"*": rules.pop("*")} if "*" in rules else {}
    ordered.update(rules)
    ordered["external_directory"] = ordered.pop("external_directory", "deny")
    return ordered


def opencode_env(
    settings: OpencodeSettings, sandbox: Path, base_env: Mapping[str, str] | None = None, warmup_url: str | None = None
) -> dict[str, str]:
    """The complete environment for an opencode process whose state lives under ``sandbox``.

    ``base_env`` (default: this process's environment) contributes only :data:`PASSTHROUGH_ENV`
    and the API key variable. opencode creates the sandbox directories itself.
    """
    parent = os.environ if base_env is None else base_env
    keep = (*PASSTHROUGH_ENV, settings.api_key_env) if settings.api_key_env else PASSTHROUGH_ENV
    env = {name: parent[name] for name in keep if name in parent}
    root = sandbox.resolve()
    env.update({var: str(root / sub) for var, sub in SANDBOX_DIRS.items()})
    env.update(OFFLINE_FLAGS)
    env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_config(settings, warmup_url))
    return env


def project_root() -> Path:
    """The source tree this package was loaded from (the directory above ``backends/``)."""
    return Path(__file__).resolve().parent.parent


def find_opencode(configured: str | None = None, path: str | None = None) -> Path:
    """Locate the opencode executable: the configured one, else PATH, else the pinned .tools copy.

    ``path`` overrides the PATH searched (default: this process's PATH).
    """
    if configured:
        found = shutil.which(configured, path=path)
        if found is None:
            raise OpencodeNotFoundError(f"configured opencode binary {configured!r} is not an executable")
        return Path(found)
    found = shutil.which("opencode", path=path)
    if found is not None:
        return Path(found)
    pinned = project_root() / PINNED_BINARY
    if os.access(pinned, os.X_OK):
        return pinned
    raise OpencodeNotFoundError(
        f"opencode not found: not configured, not on PATH, and not at {pinned} (run `make tools`)"
    )
