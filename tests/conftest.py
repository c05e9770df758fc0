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
