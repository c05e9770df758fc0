#!/usr/bin/env bash
# The run-time half of examples/procurement, end to end on this machine (after README command 1's set-up):
# two local OpenAI-compatible servers stand in for the Azure and AWS deployments (ports 28081 and 28082, as
# org.yaml says), `sovra up` starts the router on the local Ray, REQUESTS requests go through it, and
# `sovra spend` shows the Azure credit burnt for this month and its forecast. Everything it starts is stopped.
#
#   examples/procurement/runtime/walkthrough.sh            # 60 requests; SOVRA_HOME and SOVRA_ROUTER_PORT apply
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=examples/procurement/runtime
sovra=.venv/bin/sovra
py=.venv/bin/python
requests="${REQUESTS:-60}"
port="${SOVRA_ROUTER_PORT:-8000}"
export DEMO_ENDPOINT_KEY=sk-test-demo-endpoint   # the servers' key; the router reads it (api_key_env)
logs="$(mktemp -d)"
pids=()
cleanup() {
  "$sovra" down "$here/deployment.yaml" --org "$here/org.yaml" --stop-ray >"$logs/down.log" 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
mkfifo "$logs/stdin"; exec 3<>"$logs/stdin"  # the servers watch stdin (they stop when it closes): a pipe, not /dev/null
for spec in azure-swedencentral:28081 aws-eu-central-1:28082; do
  "$py" bench/openai_echo.py --port "${spec#*:}" --name "${spec%%:*}" --api-key-env DEMO_ENDPOINT_KEY \
    <&3 >"$logs/${spec%%:*}.log" 2>&1 &
  pids+=("$!")
done
for spec in 28081 28082; do  # ready once it answers (401 without the key)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$spec/v1/models" && break; sleep 0.1; done
done

echo "== sovra up"
"$sovra" up "$here/deployment.yaml" --org "$here/org.yaml"

echo "== $requests requests as tenant support-desk"
"$py" - "$port" "$requests" <<'PY'
import collections, sys, time, httpx
port, n = sys.argv[1], int(sys.argv[2])
served = []
with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                  headers={"Authorization": "Bearer sk-test-demo-support"}) as c:
    for i in range(n):
        r = c.post("/v1/chat/completions", json={"model": "ticket-triage-live", "max_tokens": 8,
                                                 "messages": [{"role": "user", "content": f"ticket {i}"}]})
        if r.status_code != 200:
            sys.exit(f"request {i} answered {r.status_code}: {r.text[:500]}")
        served.append(r.headers["x-sovra-target"])
        time.sleep(0.1)  # the ledger writes every 50 ms: the router's view of the credit follows
runs = [(t, sum(1 for _ in g)) for t, g in __import__("itertools").groupby(served)]
print("served, in order:", ", ".join(f"{t} x{k}" for t, k in runs))
PY
sleep 1  # the last entries reach the store

echo "== sovra spend"
"$sovra" spend --org "$here/org.yaml" --by cloud,target
"$sovra" spend --org "$here/org.yaml" --by cloud,target --html "${SPEND_HTML:-$here/spend.html}" >/dev/null
echo "chart: ${SPEND_HTML:-$here/spend.html}"
