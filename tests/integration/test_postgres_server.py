"""The tests' PostgreSQL (tests/pg_server.py, fixtures in tests/conftest.py) is a real server that only the tests can
reach, that checks passwords, and that survives a crash with its committed data, as the stores built on it need."""

import psutil
import psycopg
import pytest

pytestmark = pytest.mark.integration

_seen_databases: set[str] = set()


def test_connects_and_runs_a_query(postgres_dsn):
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        assert conn.execute("SELECT name FROM t ORDER BY id").fetchall() == [("one",), ("two",)]
        assert conn.execute("SELECT current_user").fetchone() == ("sovra",)


def _sockets(pid: int, kind: str) -> list:
    """The sockets of the postmaster and its children; a backend that exits meanwhile (a closed client's) has none."""
    postmaster = psutil.Process(pid)
    found = []
    for proc in [postmaster, *postmaster.children(recursive=True)]:
        try:
            found += proc.net_connections(kind=kind)
        except psutil.NoSuchProcess:
            pass
    return found


def test_listens_only_on_loopback_and_its_own_socket_dir(postgres_server):
    inet = [c for c in _sockets(postgres_server.pid, "inet") if c.status == psutil.CONN_LISTEN]
    assert {(c.laddr.ip, c.laddr.port) for c in inet} == {("127.0.0.1", postgres_server.port)}
    unix = [c.laddr for c in _sockets(postgres_server.pid, "unix") if c.laddr]
    assert unix and all(path.startswith(f"{postgres_server.root}/") for path in unix), unix
    with psycopg.connect(postgres_server.dsn) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)


def test_wrong_or_missing_password_is_refused(postgres_server):
    wrong = postgres_server.dsn.replace(postgres_server.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, passfile="/nonexistent")
    # No trust auth on the Unix socket either.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=str(postgres_server.root), port=postgres_server.port, user="sovra", dbname="postgres",
                        passfile="/nonexistent")


def test_kill_then_start_keeps_committed_data(postgres_own):
    dsn = postgres_own.create_database("crash")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int)")
        conn.execute("INSERT INTO t VALUES (1)")
    pending = psycopg.connect(dsn)  # a transaction still open when the store dies
    pending.execute("INSERT INTO t VALUES (2)")
    port = postgres_own.port

    postgres_own.kill()
    assert not postgres_own.running
    with pytest.raises(psycopg.OperationalError):
        pending.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    pending.close()

    postgres_own.start()
    assert postgres_own.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_database_of_its_own(postgres_dsn, run):
    """Whichever runs second would find the first's table if the two shared a database."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE mine (run int)")
    assert name not in _seen_databases
    _seen_databases.add(name)
