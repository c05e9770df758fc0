"""A private, real PostgreSQL server for the tests, started from the system's binaries on 127.0.0.1 only.

Each server has its own data directory, port, Unix-socket directory and superuser password, so tests never touch a
system cluster or one another's data, and a test can crash its server (`kill`) and bring it back (`start`) the way a
production store fails. The binaries come from `scripts/postgres-server-install`.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import psutil
import psycopg
from psycopg import sql

SUPERUSER = "sovra"
INSTALL_HINT = "run scripts/postgres-server-install (it installs Debian's postgresql-15)"


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries on this machine: the tests need them and say how to get them."""


def find_bindir() -> Path:
    """The newest Debian install (/usr/lib/postgresql/<major>/bin), else `pg_config --bindir` when it holds the server:
    Debian keeps several majors side by side, and only the first has initdb/postgres outside PATH."""
    majors = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").is_file()]
    majors.sort(key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    if majors:
        return majors[-1]
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "postgres").is_file():
            return Path(out)
    raise PostgresNotInstalled(f"no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/postgres); {INSTALL_HINT}")


def _free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (the kernel picks it); the server may still lose it to a race,
    which `PostgresServer.start` retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dead(proc: psutil.Process) -> bool:
    """Gone, or a zombie (which holds no memory or sockets) waiting for whoever reaps it."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class PostgresServer:
    """One postmaster, its data directory and its temp dir. PostgreSQL refuses to run as root, so under root its
    programs run as the `postgres` system user (made by the Debian package), which then owns the temp dir."""

    def __init__(self, bindir: Path | None = None, ready_timeout: float = 30.0) -> None:
        self.bindir = bindir or find_bindir()
        self.ready_timeout = ready_timeout
        self.password = secrets.token_urlsafe(24)  # URL-safe: it goes into the DSN as is
        self.port: int | None = None
        self.root = Path(tempfile.mkdtemp(prefix="sovra-pg-"))  # also the Unix-socket dir: short, under 107 bytes
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresNotInstalled(f"running as root and there is no `postgres` user; {INSTALL_HINT}") from None
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.root, user.pw_uid, user.pw_gid)
        try:
            self._initdb()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def _run(self, *args: str) -> None:
        """Run one of the server's programs (as `postgres` under root), failing with its output."""
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, capture_output=True, text=True,
                              check=False, timeout=120, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def _initdb(self) -> None:
        """A cluster whose only superuser has a password checked by SCRAM, on TCP and on the socket: no trust auth."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        try:
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        """Start the postmaster and wait until it takes connections. The first start picks a free port (a new one
        if another process grabbed it first); later starts, after `kill` or `stop`, reuse it and the data dir, and
        after a kill PostgreSQL replays its WAL on its own, as after a real crash."""
        if self.running:
            return
        for attempt in range(5):
            first = self.port is None
            if first:
                self.port = _free_port()
            try:
                self._spawn()
                return
            except RuntimeError:
                if first and attempt < 4 and "Address already in use" in self._log_tail():
                    self.port = None
                    continue
                raise

    def _spawn(self) -> None:
        """One postmaster on 127.0.0.1:port and its own socket dir, logging to server.log; waits for readiness."""
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                 "-c", "fsync=off", "-c", "shared_buffers=32MB", "-c", "max_connections=200"],
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **self._as)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"postgres exited on start; log tail:\n{self._log_tail()}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"postgres did not accept connections within {self.ready_timeout:.0f}s "
                                       f"({e}); log tail:\n{self._log_tail()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash of the store would. The postmaster is frozen first so
        it forks nothing while its children are listed, and all must be dead before it returns: a restart refuses
        to start while an old backend is still attached to the old shared memory."""
        if self._proc is None:
            return
        try:
            postmaster = psutil.Process(self._proc.pid)
            postmaster.suspend()
            procs = [*postmaster.children(recursive=True), postmaster]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self._proc.wait(timeout=30)
        self._proc = None
        deadline = time.monotonic() + 30
        while not all(_dead(p) for p in procs):  # the backends are init's now: dead once killed, reaped or not
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres processes survived SIGKILL: {[p.pid for p in procs if not _dead(p)]}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit); the data dir stays for `start`."""
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its temp dir (data, socket, log): nothing is left behind."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- use --------------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's pid (the process that listens)."""
        assert self._proc is not None, "server not started"
        return self._proc.pid

    def dsn_for(self, dbname: str) -> str:
        """A libpq URI for `dbname` over TCP on 127.0.0.1, as the superuser."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        """The server's default database (`postgres`)."""
        return self.dsn_for("postgres")

    def create_database(self, name: str) -> str:
        """Create an empty database `name` and return its DSN: one per test keeps tests' tables apart."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
