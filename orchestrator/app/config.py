"""Configuration: a TOML file plus environment overrides, typed and validated.

Every section is a frozen dataclass with module-level defaults, defined by the package or layer
it configures (``[database]`` in orchestrator.db, ``[dispatcher]`` in orchestrator.dispatch,
``[worktrees]``, ``[gateway]``, ``[native]``, ``[agents.*]`` ... in theirs) and composed here.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from backends import (
    AgentConfig,
    AgentSpec,
    NativeSettings,
    OpencodePoolSettings,
    OpencodeSettings,
    PermissionPolicy,
    SandboxSettings,
    build_specs,
)
from kernel import ConfigError
from orchestrator.db.settings import DatabaseSettings, NodeSettings
from orchestrator.db.workers import default_base
from orchestrator.dispatch.settings import DispatcherSettings
from worktrees import WorktreeSettings
from ws_gateway import GatewaySettings

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_DATA_DIR = Path(".switchyard")


@dataclass(frozen=True)
class Config:
    log_level: str = "info"
    data_dir: Path = DEFAULT_DATA_DIR
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    dispatcher: DispatcherSettings = field(default_factory=DispatcherSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
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

    @property
    def node_id(self) -> str:
        """This machine's node (orchestrator.db.nodes): ``[node] id``, else derived from the host
        and the data directory, as the worker id is."""
        return self.node.id or default_base(str(self.data_dir))

    def agent_specs(self) -> dict[str, AgentSpec]:
        """The external agents: the presets with ``[agents.*]`` applied."""
        return build_specs(self.agents)


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
    clones = config.worktrees.clones if config.worktrees.clones.is_absolute() else data_dir / config.worktrees.clones
    worktrees = dataclasses.replace(config.worktrees, root=root, clones=clones)
    return dataclasses.replace(config, data_dir=data_dir, worktrees=worktrees)


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
    """``value`` as the type ``hint`` says, or ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return _union(typing.get_args(hint), value, key)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, key)
    scalar = SCALARS.get(hint)
    if scalar is not None:
        return scalar(value, key)
    container = CONTAINERS.get(origin)
    if container is not None:
        return container(typing.get_args(hint), value, key)
    raise ConfigError(key, value, f"unsupported setting type {hint!r}")


def _union(args: tuple[Any, ...], value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    reasons = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(arg, value, key)
        except ConfigError as exc:
            reasons.append(exc.reason)
    raise ConfigError(key, value, " or ".join(reasons))


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(key, value, "must be true or false")


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(key, value, "must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(key, value, "must be an integer") from None


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(key, value, "must be a number")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(key, value, "must be a number") from None
    if number < 0:
        raise ConfigError(key, value, "must not be negative")
    return number


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, value, "must be a string")
    return value


def _path(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, value, "must be a non-empty path string")
    return Path(value).expanduser()


def _tuple(args: tuple[Any, ...], value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, value, "must be a list")
    return tuple(_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))


def _mapping(args: tuple[Any, ...], value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "must be a table")
    return {str(k): _coerce(args[1], v, _join(key, str(k))) for k, v in value.items()}


# How each annotation of a settings field is read from TOML (or an environment override).
SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    Any: lambda value, _key: value,
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    Path: _path,
}
CONTAINERS: dict[Any, Callable[[tuple[Any, ...], Any, str], Any]] = {
    tuple: _tuple,
    dict: _mapping,
    Mapping: _mapping,
}


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
