"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start, hand out DSNs.

Reusable by any test package (store, issuer, vendor)::

    with PgServer.start_new() as server:
        dsn = server.create_database()        # a fresh, empty database
        ...

PostgreSQL refuses to run as root; when the tests run as root the server runs as the
``postgres`` system user (Debian's package creates it; created here if missing) through
``runuser``. Each server gets its own temp directory, a free loopback port and a Unix
socket inside the temp directory, so pytest-xdist workers never collide. ``fsync=off``:
the data is thrown away anyway. The server is stopped and its directory removed on
``stop()``, at interpreter exit, and when start-up fails.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

import psycopg
from psycopg import sql

__all__ = ["PgServer", "PgUnavailable", "find_pg_bindir"]

_SEARCH: Final = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin")
_SYSTEM_USER: Final = "postgres"
_SUPERUSER: Final = "postgres"
_START_ATTEMPTS: Final = 5


class PgUnavailable(RuntimeError):
    """No PostgreSQL binaries here (the fixture turns this into a skip)."""


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH, pg_config --bindir, Debian's layout."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(
        (p for pattern in _SEARCH for p in Path("/").glob(pattern.lstrip("/"))),
        key=lambda p: p.as_posix(),
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _system_user() -> pwd.struct_passwd:
    """The unprivileged user the server runs as when we are root."""
    try:
        return pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/false", _SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(_SYSTEM_USER)


class PgServer:
    """One private PostgreSQL server. Use :meth:`start_new`, then :meth:`stop`."""

    def __init__(self, bindir: Path, *, fsync: bool = False, max_connections: int = 60) -> None:
        self._bindir = bindir
        self._fsync = fsync
        self._max_connections = max_connections
        self._as_user: pwd.struct_passwd | None = _system_user() if os.geteuid() == 0 else None
        self._root = Path(tempfile.mkdtemp(prefix="farthing-pg-"))
        self._data = self._root / "data"
        self._log = self._root / "server.log"
        self._names = itertools.count(1)
        self.port = 0
        self._running = False

    @classmethod
    def start_new(cls, *, fsync: bool = False, max_connections: int = 60) -> PgServer:
        bindir = find_pg_bindir()
        if bindir is None:
            raise PgUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
        server = cls(bindir, fsync=fsync, max_connections=max_connections)
        atexit.register(server.stop)
        try:
            server._initdb()
            server._start()
        except BaseException:
            server.stop()
            raise
        return server

    # --- lifecycle ------------------------------------------------------------------------

    def _run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = [str(self._bindir / argv[0]), *argv[1:]]
        if self._as_user is not None:
            command = ["runuser", "-u", self._as_user.pw_name, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, cwd="/")

    def _initdb(self) -> None:
        if self._as_user is not None:
            os.chown(self._root, self._as_user.pw_uid, self._as_user.pw_gid)
        done = self._run(
            ["initdb", "-D", str(self._data), "-U", _SUPERUSER, "--auth=trust",
             "--no-sync", "--encoding=UTF8", "--locale=C"]
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def _options(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self._root),
            "fsync": "on" if self._fsync else "off",
            "synchronous_commit": "on" if self._fsync else "off",
            "full_page_writes": "on" if self._fsync else "off",
            "shared_buffers": "32MB",
            "max_connections": str(self._max_connections),
            "dynamic_shared_memory_type": "mmap",
        }
        return " ".join(f"-c {key}={value}" for key, value in settings.items())

    def _start(self) -> None:
        for _ in range(_START_ATTEMPTS):
            self.port = _free_port()
            done = self._run(
                ["pg_ctl", "-D", str(self._data), "-l", str(self._log), "-w", "-t", "60",
                 "-o", self._options(), "start"]
            )  # fmt: skip
            if done.returncode == 0:
                self._running = True
                return
        log = self._log.read_text(errors="replace") if self._log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start:\n{log[-4000:]}")

    def halt(self) -> None:
        """Stop the server but keep its data, for :meth:`resume` (a database outage)."""
        if self._running:
            self._run(["pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop"])
            self._running = False

    def resume(self) -> None:
        """Start a halted server again, on the same port (clients' DSNs stay valid)."""
        done = self._run(
            ["pg_ctl", "-D", str(self._data), "-l", str(self._log), "-w", "-t", "60",
             "-o", self._options(), "start"]
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start again:\n{done.stderr}")
        self._running = True

    def stop(self) -> None:
        """Stop the server (immediate mode) and delete its directory. Idempotent."""
        if self._running:
            self._run(["pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop"])
            self._running = False
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- databases ------------------------------------------------------------------------

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create a database (a fresh empty one by default); return its DSN."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        self._admin(statement)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
