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


def test_a_library_traceback_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    try:
        raise ConnectionResetError("connection reset by peer")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").exception("error in connection release")
    logging.getLogger("websockets.server").info("server listening")  # chatter stays out
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert " error asyncpg.pool.log " in lines[0]
    assert 'message="error in connection release"' in lines[0]
    assert 'error="ConnectionResetError: connection reset by peer"' in lines[0]
    assert "Traceback" not in lines[0]
    for name in ("switchyard", "asyncpg", "websockets", "asyncio"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
