from __future__ import annotations

import logging

import pytest

from kernel.logs import configure_logging, get_logger, redact


def test_urls_lose_their_password() -> None:
    assert redact("postgresql://switchyard:s3cret@127.0.0.1:5432/db") == "postgresql://switchyard:***@127.0.0.1:5432/db"
    assert redact("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"


def test_one_structured_line_without_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    log = get_logger("test")
    log.info("task.claimed", task_id=7, api_key="sk-live-123", url="postgresql://u:pw@h/db", note="two words")
    log.debug("not.shown")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert " info task.claimed task_id=7 api_key=*** url=postgresql://u:***@h/db " in lines[0]
    assert 'note="two words"' in lines[0]
    assert "sk-live-123" not in err and "pw@" not in err
    logging.getLogger("switchyard").handlers.clear()
