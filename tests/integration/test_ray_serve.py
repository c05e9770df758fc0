"""`sovra up` on a real local Ray (127.0.0.1, shared by the session): an EU and a US Ray target, the router as Serve
ingress, the official openai client. Residency is checked from `X-Sovra-Target` and from the audit trail."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray tests need the 'ray' extra (scripts/test installs it)")
openai = pytest.importorskip("openai")

from infra import serve_config as sc  # noqa: E402
from infra.serve_api import ServeApi  # noqa: E402
from orchestrator import deploy, planning  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SPECS = Path(__file__).parent / "specs"
ORG = SPECS / "two-zones-org.yaml"
EU_KEY, US_KEY = "sk-test-ray-eu", "sk-test-ray-us"
EU_APP, US_APP = sc.app_name("m", "onprem-paris"), sc.app_name("m", "onprem-virginia")


def _up(settings, spec: Path, log: list[str] | None = None):
    inputs = planning.load_inputs([spec], ORG)
    return deploy.up(inputs, planning.plan(inputs), settings, (log if log is not None else []).append)[0]


def _spec(tmp_path: Path, replicas_min: int, replicas_max: int) -> Path:
    text = (SPECS / "two-zones.yaml").read_text().replace("{min: 2, max: 4}", f"{{min: {replicas_min}, "
                                                                           f"max: {replicas_max}}}")
    path = tmp_path / f"two-zones-{replicas_min}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def deployed(sovra_ray):
    result = _up(sovra_ray, SPECS / "two-zones.yaml")
    ray.init(address=sovra_ray.local_ray().running().gcs_address, log_to_driver=False, configure_logging=False)
    yield {"url": result.router_url, "settings": sovra_ray, "api": ServeApi(result.dashboard),
           "audit": Path(sovra_ray.audit_path)}
    ray.shutdown()


def client(d, key=EU_KEY, headers: dict[str, str] | None = None):
    return openai.OpenAI(base_url=d["url"] + "/v1", api_key=key, max_retries=0, default_headers=headers)


def _wait_admitted(d, key: str, target: str, timeout_s: float = 30) -> None:
    """After an outage the breaker re-admits a backend after its cooldown; wait until traffic reaches it again."""
    deadline = time.time() + timeout_s
    while True:
        try:
            raw = client(d, key).chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "warm"}])
            if raw.headers["X-Sovra-Target"] == target:
                return
        except openai.APIStatusError:
            pass
        assert time.time() < deadline, f"{target} never took traffic again"
        time.sleep(0.5)


def test_second_up_changes_nothing(deployed):
    before = deployed["api"].apps()
    log: list[str] = []
    again = _up(deployed["settings"], SPECS / "two-zones.yaml", log)
    assert again.changed is False and any("nothing to change" in line for line in log)
    after = deployed["api"].apps()
    assert {n: a.replica_ids for n, a in after.items()} == {n: a.replica_ids for n, a in before.items()}
    assert set(after) == {EU_APP, US_APP, sc.ROUTER_APP}


def test_openai_client_chat_stream_embeddings_and_errors(deployed):
    raw = client(deployed).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "eu-secret"}])
    assert raw.parse().choices[0].message.content == "served-by onprem-paris"
    assert raw.headers["X-Sovra-Target"] == "onprem-paris" and raw.headers["X-Sovra-Zone"] == "EU"
    chunks = list(client(deployed).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "eu-secret"}], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "served-by onprem-paris"
    assert client(deployed).embeddings.create(model="m", input="abcd").data[0].embedding[0] == 4.0
    with pytest.raises(openai.NotFoundError):
        client(deployed).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client(deployed, "sk-wrong").chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client(deployed).chat.completions.create(model="m", messages=[])


def test_eu_tenant_never_reaches_us_even_when_every_eu_backend_is_gone(deployed):
    raw = client(deployed, US_KEY).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["X-Sovra-Target"] == "onprem-virginia"
    with pytest.raises(openai.PermissionDeniedError):  # a header may narrow, never widen
        client(deployed, headers={"X-Sovra-Residency": "US"}).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "eu-secret widen"}])
    api = deployed["api"]
    current = [dict(a.config) for a in api.apps().values()]
    # Every EU replica gone: the EU app is removed while the router still lists it.
    api.apply(sc.serve_config([c for c in current if c["name"] != EU_APP], host="127.0.0.1",
                              port=deployed["settings"].router_port))
    api.wait(lambda apps: EU_APP not in apps, timeout_s=60, what="the EU app to go")
    try:
        for _ in range(5):  # retries, breaker trips and failover must all stay inside EU
            with pytest.raises(openai.InternalServerError) as exc:
                client(deployed).chat.completions.create(model="m",
                                                         messages=[{"role": "user", "content": "eu-secret"}])
            assert exc.value.status_code == 503 and exc.value.body["code"] == "no_allowed_backend"
    finally:
        _up(deployed["settings"], SPECS / "two-zones.yaml")
    _wait_admitted(deployed, EU_KEY, "onprem-paris")
    time.sleep(0.5)
    text = deployed["audit"].read_text()
    eu = [r for r in map(json.loads, text.splitlines()) if r["tenant"] == "eu"]
    assert eu and all(r["target"] in ("onprem-paris", None) and r["zone"] in ("EU", None) for r in eu)
    assert sum(r["status"] == 503 for r in eu) >= 5
    assert "eu-secret" not in text and EU_KEY not in text


def test_changed_replica_count_updates_in_place_without_dropping_traffic(deployed, tmp_path):
    api = deployed["api"]
    before = api.apps()
    stop, results = threading.Event(), []

    def load():
        c = client(deployed, US_KEY)
        while not stop.is_set():
            try:
                r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "load"}])
                results.append(r.choices[0].message.content)
            except Exception as exc:  # counted below
                results.append(f"FAILED {type(exc).__name__}: {exc}")

    t = threading.Thread(target=load)
    t.start()
    try:
        result = _up(deployed["settings"], _spec(tmp_path, 4, 4))
    finally:
        time.sleep(0.5)
        stop.set()
        t.join()
    assert result.changed
    after = api.apps()
    grew = [n for n in (EU_APP, US_APP) if after[n].running > before[n].running]
    assert grew, "no app gained replicas"
    for name in (EU_APP, US_APP):  # in place: every old replica still serves
        assert set(before[name].replica_ids) <= set(after[name].replica_ids), name
    assert results and not [r for r in results if r.startswith("FAILED")]
    assert all(r == "served-by onprem-virginia" for r in results)


def test_replica_killed_under_load_fails_no_request(deployed, tmp_path):
    from ray.util import list_named_actors

    _up(deployed["settings"], _spec(tmp_path, 4, 4))
    app = max((EU_APP, US_APP), key=lambda n: deployed["api"].apps()[n].running)
    key, target = (EU_KEY, "onprem-paris") if app == EU_APP else (US_KEY, "onprem-virginia")
    replicas = [a for a in list_named_actors(all_namespaces=True) if app in a["name"] and "ModelServer" in a["name"]]
    assert len(replicas) >= 2
    _wait_admitted(deployed, key, target)
    c = client(deployed, key)
    done_at: list[float] = []

    def one(i):
        try:
            r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"secret {i}"}])
            done_at.append(time.time())
            return r.choices[0].message.content
        except Exception as exc:  # counted, not raised: the assertion below says how many failed
            return f"FAILED {type(exc).__name__}: {exc}"

    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(600)]
        while len(done_at) < 50:  # kill once traffic is flowing, not after a fixed time (speed varies)
            time.sleep(0.005)
        victim = replicas[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        killed_at = time.time()
        results = [f.result() for f in futures]
    assert sum(t > killed_at for t in done_at) >= 50, "the kill did not happen under load"
    assert not [r for r in results if r.startswith("FAILED")]
    assert all(r == f"served-by {target}" for r in results)


def test_cli_status_and_audit(deployed, sovra):
    # after the previous test killed a replica, Serve replaces it; status reports the app UNHEALTHY until then
    deployed["api"].wait(lambda apps: all(a.status == "RUNNING" for a in apps.values()), timeout_s=120,
                         what="every app to be RUNNING again")
    _wait_admitted(deployed, EU_KEY, "onprem-paris")  # this test's own traffic, whatever ran before it
    _wait_admitted(deployed, US_KEY, "onprem-virginia")
    status = sovra("status", "--org", ORG, "-o", "json")
    assert status.returncode == 0, status.stderr
    entries = json.loads(status.stdout)
    local = next(e for e in entries if e["cluster"] == "local")
    assert local["router"]["healthy"] is True
    zones = {b["target"]: (b["zone"], b["status"]) for b in local["backends"]}
    assert zones == {"onprem-paris": ("EU", "RUNNING"), "onprem-virginia": ("US", "RUNNING")}
    audit = sovra("audit", "--tenant", "eu", "-o", "json", "-n", "1000")
    assert audit.returncode == 0, audit.stderr
    records = json.loads(audit.stdout)
    assert records and {r["tenant"] for r in records} == {"eu"}
    assert all(r["zone"] in ("EU", None) for r in records)
    table = sovra("audit", "--zone", "US", "-n", "3")
    assert table.returncode == 0 and "onprem-virginia" in table.stdout and "onprem-paris" not in table.stdout


def test_down_removes_the_deployment_and_the_router(deployed):
    inputs = planning.load_inputs([SPECS / "two-zones.yaml"], ORG)
    [result] = deploy.down(inputs, deployed["settings"], [].append)
    assert result.changed and result.apps == {}
    assert deployed["api"].apps() == {}
    again = deploy.down(inputs, deployed["settings"], [].append)
    assert again[0].changed is False
