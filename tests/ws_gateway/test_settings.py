"""The [gateway] configuration section: defaults, overrides, refusals that name the key."""

from __future__ import annotations

import pytest

from kernel.errors import ConfigError
from orchestrator.app.config import load_config
from ws_gateway import GatewaySettings


def test_defaults_bind_loopback() -> None:
    settings = load_config(environ={}).gateway
    assert settings == GatewaySettings()
    assert settings.host == "127.0.0.1"
    assert settings.allowed_origins == ()


def test_environment_overrides() -> None:
    environ = {
        "SWITCHYARD__GATEWAY__PORT": "9001",
        "SWITCHYARD__GATEWAY__ALLOWED_ORIGINS": '["https://ide.example"]',
        "SWITCHYARD__GATEWAY__SEND_QUEUE_FRAMES": "64",
    }
    settings = load_config(environ=environ).gateway
    assert (settings.port, settings.allowed_origins, settings.send_queue_frames) == (9001, ("https://ide.example",), 64)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("PORT", "70000", "gateway.port must be 0..65535"),
        ("SEND_QUEUE_FRAMES", "1", "send_queue_frames must be at least 2"),
        ("SEND_QUEUE_BYTES", "1000", "send_queue_bytes must be at least 65536"),
        ("MAX_FRAME_BYTES", "0", "max_frame_bytes must be at least 1"),
        ("POLL_INTERVAL", "0", "poll_interval must be positive"),
        ("ALLOWED_ORIGINS", '"https://one.example"', "must be a list"),
    ],
)
def test_bad_values_are_refused(key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as refused:
        load_config(environ={f"SWITCHYARD__GATEWAY__{key}": value})
    assert refused.value.key.startswith("gateway")
