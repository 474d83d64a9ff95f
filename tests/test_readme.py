"""The README's configuration example stays valid as the settings change."""

from __future__ import annotations

from pathlib import Path

from orchestrator.app.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_configuration_example_loads(tmp_path: Path) -> None:
    text = README.read_text()
    example = text[text.index("```toml") + len("```toml") :]
    example = example[: example.index("```")]
    file = tmp_path / "switchyard.toml"
    file.write_text(example)
    config = load_config(file, environ={})
    assert config.gateway.port == 8765
    assert "my-gemini" in config.agent_specs()
