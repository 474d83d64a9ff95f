"""A private PostgreSQL cluster for when no database URL is configured.

The cluster lives in one directory: initialised on first use (``initdb``), started with
``pg_ctl`` listening on a Unix socket inside the directory and on 127.0.0.1, and reused on
the next start. Settings go into ``switchyard.conf`` (included from postgresql.conf), so
no command line is ever built as a shell string. Local socket connections are trusted;
TCP connections need the generated password kept (mode 0600) in the directory.

PostgreSQL refuses to run as root, so when we are root every server binary runs as the
``postgres`` user and the cluster directory belongs to it.

The test suite uses this module too: one cluster per test run.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kernel import port_is_free
from orchestrator.db import queries as q
from orchestrator.errors import EmbeddedPostgresError, PortInUse, PostgresNotInstalled

SUPERUSER = "switchyard"
DATABASE = "switchyard"
PASSWORD_FILE = "switchyard.password"  # noqa: S105 - a file name, not a password
SETTINGS_FILE = "switchyard.conf"
SOCKET_DIR = "run"
LOG_FILE = "postgres.log"
START_TIMEOUT_S = 60
# pg_ctl stop waits this long (its default, 60 s, is too short for a shutdown checkpoint on a
# loaded machine).
STOP_WAIT = "180"
SERVICE_USER = "postgres"

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them "
    "(Debian/Ubuntu: apt-get install postgresql) or set database.pg_bindir, "
    "or point Switchyard at an existing database with SWITCHYARD_DATABASE_URL."
)


def find_bindir(configured: str = "") -> Path:
    """Directory holding initdb and pg_ctl, or PostgresNotInstalled with one clear hint."""
    candidates: list[Path] = []
    if configured:
        candidates.append(Path(configured))
    else:
        pg_config = shutil.which("pg_config")
        if pg_config:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
            if out.returncode == 0:
                candidates.append(Path(out.stdout.strip()))
        initdb = shutil.which("initdb")
        if initdb:
            candidates.append(Path(initdb).parent)
        candidates.extend(Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise PostgresNotInstalled(INSTALL_HINT)


@dataclass
class EmbeddedPostgres:
    directory: Path
    port: int
    bindir: Path

    @classmethod
    def create(cls, directory: Path, port: int, configured_bindir: str = "") -> EmbeddedPostgres:
        return cls(directory=directory.absolute(), port=port, bindir=find_bindir(configured_bindir))

    # ------------------------------------------------------------------ paths and state

    @property
    def socket_dir(self) -> Path:
        return self.directory / SOCKET_DIR

    @property
    def initialized(self) -> bool:
        return (self.directory / "PG_VERSION").is_file()

    def password(self) -> str:
        return (self.directory / PASSWORD_FILE).read_text().strip()

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}:{self.password()}@127.0.0.1:{self.port}/{database}"

    def is_running(self) -> bool:
        if not self.initialized:
            return False
        result = self._run([str(self.bindir / "pg_ctl"), "status", "-D", str(self.directory)], check=False)
        return result.returncode == 0

    def running_port(self) -> int | None:
        """The port of a server already running on this directory (read from postmaster.pid)."""
        try:
            lines = (self.directory / "postmaster.pid").read_text().splitlines()
            return int(lines[3]) if self.is_running() else None
        except (OSError, IndexError, ValueError):
            return None

    def postmaster_alive(self) -> bool:
        """A cheap check (no pg_ctl): postmaster.pid names a live process."""
        try:
            pid = int((self.directory / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except PermissionError:
            return True  # it runs, as another user
        except (OSError, ValueError):
            return False
        return True

    # ------------------------------------------------------------------ lifecycle

    def ensure_initialized(self) -> None:
        if self.initialized:
            return
        self._check_reachable_by_service_user()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._chown(self.directory)
        self.directory.chmod(0o700)
        password = secrets.token_urlsafe(24)
        pwfile = self.directory.parent / f".{self.directory.name}.pw.tmp"
        pwfile.unlink(missing_ok=True)
        _write_private(pwfile, password)
        self._chown(pwfile)
        try:
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.directory),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        _write_private(self.directory / PASSWORD_FILE, password)
        with (self.directory / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{SETTINGS_FILE}'\n")

    def start(self) -> None:
        """Start the cluster (initialising it first if needed); a running one is reused."""
        self.ensure_initialized()
        running = self.running_port()
        if running is not None:
            self.port = running
            return
        if not port_is_free(self.port):
            raise PortInUse(
                f"port {self.port} on 127.0.0.1 is in use; set database.embedded_port to a free port "
                f"or stop whatever listens there"
            )
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        settings = self.directory / SETTINGS_FILE
        settings.write_text(
            "# Written by Switchyard at every start.\n"
            f"port = {self.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "max_connections = 200\n"
            "shared_buffers = 128MB\n"
            "fsync = on\n"
        )
        self._chown(settings)
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.directory),
                "-l",
                str(self.directory / LOG_FILE),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
            ],
            what="pg_ctl start",
        )
        self._ensure_database()

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run(
                [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.directory), "-m", mode, "-w", "-t", STOP_WAIT],
                what="pg_ctl stop",
            )

    def restart(self) -> None:
        self.stop()
        self.start()

    # ------------------------------------------------------------------ helpers

    def _ensure_database(self) -> None:
        psql = str(self.bindir / "psql")
        if not Path(psql).is_file():
            psql = shutil.which("psql") or psql
        base = [psql, "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-X", "-q", "-A", "-t"]
        found = self._run([*base, "-d", "postgres", "-c", q.DATABASE_EXISTS])
        if found.stdout.strip() != "1":
            self._run([*base, "-d", "postgres", "-c", q.CREATE_DATABASE], what="create database")

    def _as_service_user(self) -> bool:
        return os.geteuid() == 0

    def _chown(self, path: Path) -> None:
        if self._as_service_user():
            user = self._service_user()
            os.chown(path, user.pw_uid, user.pw_gid)

    def _service_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root, but there is no '{SERVICE_USER}' user to run PostgreSQL as; "
                "create it or run Switchyard as an ordinary user"
            ) from None

    def _check_reachable_by_service_user(self) -> None:
        """As root, the postgres user must be able to walk down to the cluster directory."""
        if not self._as_service_user():
            return
        user = self._service_user()
        for parent in reversed(self.directory.parents):
            if not parent.exists():
                break
            mode = parent.stat().st_mode
            owner_ok = parent.stat().st_uid == user.pw_uid and mode & 0o100
            if not (mode & 0o001 or owner_ok):
                raise EmbeddedPostgresError(
                    f"the '{SERVICE_USER}' user cannot enter {parent} (mode {oct(mode & 0o777)}), so it cannot "
                    f"run a cluster in {self.directory}; set data_dir to a directory it can reach"
                )

    def _run(self, args: list[str], what: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._service_user() if self._as_service_user() else None
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.directory if self.directory.exists() and user is None else "/",
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            env={**os.environ, "LC_ALL": "C"},
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            tail = detail[-1] if detail else f"exit code {result.returncode}"
            log_hint = f" (see {self.directory / LOG_FILE})" if what.startswith("pg_ctl") else ""
            raise EmbeddedPostgresError(f"{what or args[0]} failed: {tail}{log_hint}")
        return result


def _write_private(path: Path, secret: str) -> None:
    """Create ``path`` holding ``secret``, mode 0600 from the start: no moment anyone else may read it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
