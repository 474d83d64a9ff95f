from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel.db import connect
from kernel.net import free_port
from orchestrator.db.embedded import EmbeddedPostgres, _write_private, find_bindir
from orchestrator.errors import PortInUse, PostgresNotInstalled
from testkit.cluster import reachable_tmp_dir


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    with reachable_tmp_dir() as root:
        yield root / "pg"


def test_missing_binaries_give_one_clear_hint(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotInstalled, match=r"apt-get install postgresql.*SWITCHYARD_DATABASE_URL"):
        find_bindir(str(tmp_path))


def test_occupied_port_is_refused_before_starting(cluster_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        cluster = EmbeddedPostgres.create(cluster_dir, sock.getsockname()[1])
        with pytest.raises(PortInUse, match="is in use"):
            cluster.start()
    assert not cluster.is_running()


def test_cluster_is_created_reused_and_keeps_its_rows(cluster_dir: Path) -> None:
    cluster = EmbeddedPostgres.create(cluster_dir, free_port())
    cluster.start()
    try:
        asyncio.run(_write_and_read(cluster.url(), write=True))
        password = cluster.password()
        cluster.stop()
        assert not cluster.is_running()
        cluster.start()  # second start reuses the initialised directory
        assert cluster.password() == password
        assert asyncio.run(_write_and_read(cluster.url(), write=False)) == "kept"
        # A second handle on a running cluster reuses it, whatever port it was asked for.
        again = EmbeddedPostgres.create(cluster_dir, free_port())
        again.start()
        assert again.port == cluster.port
    finally:
        cluster.stop()
    assert (cluster_dir / "switchyard.password").stat().st_mode & 0o077 == 0


async def _write_and_read(url: str, *, write: bool) -> str:
    conn = await connect(url)
    try:
        if write:
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('kept')")
        value: str = await conn.fetchval("SELECT v FROM kept")
        return value
    finally:
        await conn.close()


def test_secret_files_are_private_from_the_start_and_never_follow_a_link(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _write_private(tmp_path / "pw", "s3cret")
    finally:
        os.umask(old)
    assert (tmp_path / "pw").read_text() == "s3cret\n"
    assert (tmp_path / "pw").stat().st_mode & 0o777 == 0o600
    # A link planted where the file goes is refused, not written through.
    (tmp_path / "elsewhere").write_text("untouched\n")
    (tmp_path / "planted").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        _write_private(tmp_path / "planted", "s3cret")
    assert (tmp_path / "elsewhere").read_text() == "untouched\n"
