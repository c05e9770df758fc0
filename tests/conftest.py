from pathlib import Path

import pytest


def _snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under `path` with its size and mtime; None when `path` does not exist."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def ray_home_untouched():
    """Sovra keeps its Ray token under $SOVRA_HOME and never reads or writes ~/.ray: the suite must leave it as
    it found it (absent on a fresh machine, which is what `scripts/test` gives it)."""
    ray_home = Path.home() / ".ray"
    before = _snapshot(ray_home)
    yield
    after = _snapshot(ray_home)
    assert after == before, (f"{ray_home} was {'created' if before is None else 'changed'} by the tests "
                             f"(before: {before}, after: {after}); Sovra must keep Ray's token under $SOVRA_HOME")


def _postgres_server():
    """A new, not yet started `tests.pg_server.PostgresServer`; imported here, so a run without the `postgres` extra
    fails only the tests that ask for PostgreSQL. Missing pieces fail (not skip) those tests: CI must run them."""
    try:
        from tests.pg_server import PostgresNotInstalled, PostgresServer
    except ImportError as e:
        pytest.fail(f"the PostgreSQL tests need psycopg ({e}): install the `postgres` extra "
                    f"(scripts/setup-venv dev,postgres)", pytrace=False)
    try:
        return PostgresServer()
    except PostgresNotInstalled as e:
        pytest.fail(f"no PostgreSQL server for the tests: {e}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server on 127.0.0.1 shared by the session (tests get their own database from
    `postgres_dsn`); stopped and deleted at the end."""
    server = _postgres_server()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_dsn(postgres_server, request) -> str:
    """The DSN of a fresh, empty database on the session's server, made for this test alone."""
    import re
    import secrets

    name = f"{re.sub(r'[^a-z0-9]+', '_', request.node.name.lower())[:40]}_{secrets.token_hex(4)}"
    return postgres_server.create_database(name)


@pytest.fixture
def postgres_own():
    """A PostgreSQL server of the test's own, for tests that crash or stop it; closed afterwards."""
    server = _postgres_server()
    try:
        server.start()
        yield server
    finally:
        server.close()
