"""Configuration: a TOML file plus environment overrides, typed and validated.

Every section is a frozen dataclass with module-level defaults; sections that belong to a
lower package (worktrees, gateway, native, agents) are defined there and composed here.
The loader checks each value against the field's annotation, so an error always names the
full key and the bad value.

Where values come from, later wins:
1. the dataclass defaults,
2. the TOML file: ``--config FILE``, else ``$SWITCHYARD_CONFIG``,
3. ``SWITCHYARD_DATABASE_URL`` / ``SWITCHYARD_LOG_LEVEL`` / ``SWITCHYARD_DATA_DIR``, and generic
   ``SWITCHYARD__<SECTION>__<KEY>=value`` (value parsed as TOML when it parses, else a string).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from backends.errors import AgentConfigError
from backends.native import NativeSettings
from backends.opencode_env import OpencodeSettings
from backends.opencode_pool import OpencodePoolSettings
from backends.permissions import PermissionPolicy
from backends.registry import AgentConfig, AgentSpec, build_specs
from backends.sandbox import SandboxSettings
from orchestrator.errors import ConfigError
from worktrees.settings import WorktreeSettings
from ws_gateway.settings import GatewaySettings

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_DATA_DIR = Path(".switchyard")
DEFAULT_EMBEDDED_PORT = 54329
DEFAULT_POOL_SIZE = 10


@dataclass(frozen=True)
class DatabaseSettings:
    # Empty: run an embedded PostgreSQL cluster under <data_dir>/postgres.
    url: str = ""
    embedded_port: int = DEFAULT_EMBEDDED_PORT
    # Where initdb/pg_ctl live; empty: `pg_config --bindir`, then PATH, then /usr/lib/postgresql/*/bin.
    pg_bindir: str = ""
    pool_size: int = DEFAULT_POOL_SIZE


@dataclass(frozen=True)
class DispatcherSettings:
    worker_id: str = ""  # empty: <hostname>:<pid>
    max_concurrent_turns: int = 8
    poll_interval: float = 2.0
    lease_seconds: float = 30.0
    turn_timeout: float = 3600.0
    inactivity_timeout: float = 300.0
    shutdown_grace: float = 20.0
    retry_backoff: float = 2.0
    retry_backoff_max: float = 300.0
    # Deltas are batched this long before one session_events row is written.
    coalesce_ms: float = 5.0
    # Earlier complete messages of the session handed to a turn as Turn.history.
    history_messages: int = 50
    # Finalizing a turn (diff, messages, task state) gets this long afresh, whatever ended the turn.
    finalize_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_concurrent_turns < 1:
            raise ValueError("dispatcher.max_concurrent_turns must be at least 1")
        if self.poll_interval <= 0 or self.lease_seconds <= 0 or self.finalize_timeout <= 0:
            raise ValueError("dispatcher.poll_interval, lease_seconds and finalize_timeout must be positive")
        if self.history_messages < 0:
            raise ValueError("dispatcher.history_messages must not be negative")


@dataclass(frozen=True)
class Config:
    log_level: str = "info"
    data_dir: Path = DEFAULT_DATA_DIR
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    dispatcher: DispatcherSettings = field(default_factory=DispatcherSettings)
    native: NativeSettings = field(default_factory=NativeSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    worktrees: WorktreeSettings = field(default_factory=WorktreeSettings)
    opencode_pool: OpencodePoolSettings = field(default_factory=OpencodePoolSettings)
    # How every opencode process (acp, run, serve) reaches its model.
    opencode: OpencodeSettings = field(default_factory=OpencodeSettings)
    # [agents.<name>]: changes to the agent presets, or new agents (backends.registry).
    agents: dict[str, AgentConfig] = field(default_factory=dict)
    # What unattended agents may do (backends.permissions).
    permissions: PermissionPolicy = field(default_factory=PermissionPolicy)
    # The bubblewrap sandbox around every agent process (backends.sandbox).
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("log_level", self.log_level, f"must be one of {', '.join(LOG_LEVELS)}")
        self.agent_specs()  # an incomplete [agents.*] table fails at load time

    def agent_specs(self) -> dict[str, AgentSpec]:
        """The external agents: the presets with ``[agents.*]`` applied."""
        try:
            return build_specs(self.agents)
        except AgentConfigError as exc:
            raise ConfigError(exc.key, exc.value, exc.reason) from None


ENV_ALIASES = {
    "SWITCHYARD_DATABASE_URL": ("database", "url"),
    "SWITCHYARD_LOG_LEVEL": ("log_level",),
    "SWITCHYARD_DATA_DIR": ("data_dir",),
}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate everything."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    file = path or env.get("SWITCHYARD_CONFIG")
    if file:
        raw = _read_toml(Path(file))
    for var, key_path in ENV_ALIASES.items():
        if var in env:
            _set_path(raw, key_path, env[var])
    for var, value in env.items():
        if var.startswith("SWITCHYARD__"):
            key_path = tuple(part.lower() for part in var.removeprefix("SWITCHYARD__").split("__"))
            _set_path(raw, key_path, _parse_env_value(value))
    config = resolve_paths(build(Config, raw, ""))
    if file:
        # It may hold the database URL: agents never see it.
        hidden = (*config.sandbox.hidden, str(Path(file).absolute()))
        config = dataclasses.replace(config, sandbox=dataclasses.replace(config.sandbox, hidden=hidden))
    return config


def resolve_paths(config: Config) -> Config:
    """Make data_dir absolute (from the current directory) and a relative worktree root live
    under it, so every command finds the same directories wherever it is run from."""
    data_dir = config.data_dir.absolute()
    root = config.worktrees.root if config.worktrees.root.is_absolute() else data_dir / config.worktrees.root
    return dataclasses.replace(config, data_dir=data_dir, worktrees=dataclasses.replace(config.worktrees, root=root))


def build(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    """Build dataclass ``cls`` from a TOML table, refusing unknown keys and wrong types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix or "<root>", raw, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = _join(prefix, unknown[0])
        raise ConfigError(key, raw[unknown[0]], f"unknown key (known: {', '.join(sorted(fields))})")
    values = {name: _coerce(hints[name], raw[name], _join(prefix, name)) for name in raw}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(prefix or "<root>", raw, str(exc)) from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(key, value, " or ".join(errors))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, key)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(key, value, "must be true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(key, value, "must be an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(key, value, "must be an integer") from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(key, value, "must be a number")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(key, value, "must be a number") from None
        if number < 0:
            raise ConfigError(key, value, "must not be negative")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, value, "must be a non-empty path string")
        return Path(value).expanduser()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, value, "must be a list")
        return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict or origin is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "must be a table")
        return {str(k): _coerce(args[1], v, _join(key, str(k))) for k, v in value.items()}
    raise ConfigError(key, value, f"unsupported setting type {hint!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", str(path), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"not valid TOML: {exc}") from None


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _set_path(raw: dict[str, Any], key_path: tuple[str, ...], value: Any) -> None:
    table = raw
    for part in key_path[:-1]:
        table = table.setdefault(part, {})
    table[key_path[-1]] = value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
