"""Which token Sovra sends to which Ray cluster: its own file for the local Ray, the user's for a cluster with an
address, and never anything from ~/.ray (Ray's default, which a fresh machine does not have)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sovra.infra.ray_cluster import ClusterError, LocalRay, cluster_token, ensure_local_token, local_token_path

REMOTE = "http://ray-head.example:8265"


@pytest.fixture
def home_with_ray_token(tmp_path, monkeypatch) -> Path:
    """A HOME whose ~/.ray/auth_token exists (as on a machine that once ran Ray), and no RAY_AUTH_* set."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("token-from-dot-ray")
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "SOVRA_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_local_token_is_created_once_with_mode_0600_and_kept(tmp_path):
    path = ensure_local_token(tmp_path)
    assert path == tmp_path / "ray" / "auth_token" == local_token_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, as `ray get-auth-token --generate` writes
    assert ensure_local_token(tmp_path) == path and path.read_text() == token
    assert [p.name for p in path.parent.iterdir()] == ["auth_token"]  # no temporary file left behind
    assert ensure_local_token(tmp_path / "other").read_text() != token


def test_a_local_token_readable_by_others_is_refused_with_the_fix(tmp_path):
    path = ensure_local_token(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ClusterError, match=r"chmod 600"):
        ensure_local_token(tmp_path)


def test_the_local_ray_uses_only_sovras_file_never_dot_ray(home_with_ray_token, tmp_path, monkeypatch):
    sovra_home = tmp_path / "sovra"
    assert cluster_token(None, home=sovra_home) is None  # before `up` created it: nothing, not ~/.ray's
    monkeypatch.setenv("RAY_AUTH_TOKEN", "for-some-remote-cluster")
    token = ensure_local_token(sovra_home).read_text()
    assert cluster_token(None, home=sovra_home) == token
    local = LocalRay(sovra_home)
    assert local.token() == token
    assert local.client_env() == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(sovra_home / "ray" /
                                                                                        "auth_token")}


def test_a_remote_cluster_never_gets_the_dot_ray_token(home_with_ray_token):
    assert cluster_token(REMOTE) is None


def test_a_remote_cluster_token_from_its_file_then_the_environment(home_with_ray_token, tmp_path, monkeypatch):
    own = tmp_path / "paris.token"
    own.write_text("  paris-token\n")
    env_file = tmp_path / "env.token"
    env_file.write_text("env-file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(env_file))
    assert cluster_token(REMOTE) == "env-file-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert cluster_token(REMOTE) == "env-token"  # Ray's own precedence between the two variables
    assert cluster_token(REMOTE, token_file=str(own)) == "paris-token"  # the cluster's own file wins


def test_an_unreadable_or_empty_token_file_fails_closed(home_with_ray_token, tmp_path, monkeypatch):
    with pytest.raises(ClusterError, match=r"cannot read the Ray token file .*missing.*auth_token_file"):
        cluster_token(REMOTE, token_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterError, match="is empty"):
        cluster_token(REMOTE)


def test_a_record_from_before_target_resources_is_still_read(tmp_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "cluster.json").write_text(json.dumps(
        {"pid": 1, "gcs_port": 2, "dashboard_port": 3, "num_cpus": 2}))
    rec = LocalRay(tmp_path).record()
    assert rec is not None and rec.resources == ()
