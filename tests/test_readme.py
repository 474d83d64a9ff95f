"""The README's configuration examples stay valid as the settings change."""

from __future__ import annotations

from pathlib import Path

from orchestrator.app.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"


def toml_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split("```toml")[1:]]


def test_readme_configuration_examples_load(tmp_path: Path) -> None:
    blocks = toml_blocks(README.read_text())
    assert len(blocks) == 2
    file = tmp_path / "switchyard.toml"
    for example in blocks:
        file.write_text(example)
        load_config(file, environ={})
    file.write_text(blocks[0])
    rules = load_config(file, environ={}).permissions.rules
    assert rules["pytest"].args == "any" and rules["make"].subcommands["test"].args == "any"
    file.write_text(blocks[1])
    config = load_config(file, environ={})
    assert config.gateway.port == 8765
    assert "my-gemini" in config.agent_specs()
