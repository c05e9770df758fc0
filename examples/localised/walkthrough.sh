#!/usr/bin/env bash
# Locale variants end to end on this machine (after README command 1's set-up): three local OpenAI-compatible
# servers stand in for the company's endpoints in Frankfurt, Paris and Dubai (ports 28091-28093 on 127.0.0.1, as
# org.yaml says); `sovra plan` shows support, support.fr and support.ar placed inside their residencies, `sovra up`
# starts the router on the local Ray, a French, an Arabic, an EU tenant's Arabic and a Gulf tenant's English request
# go through it (with the headers they get back), and `sovra audit` shows the locale and the variant each was served by. Everything it
# starts is stopped.
#
#   examples/localised/walkthrough.sh            # SOVRA_HOME and SOVRA_ROUTER_PORT apply
set -euo pipefail
cd "$(dirname "$0")/../.."
here=examples/localised
sovra=.venv/bin/sovra
py=.venv/bin/python
port="${SOVRA_ROUTER_PORT:-8000}"
export DEMO_ENDPOINT_KEY=sk-test-demo-endpoint       # the servers' key; the router reads it (api_key_env)
export SOVRA_ADMIN_KEY=sk-test-localised-auditor     # `sovra audit` reads the trail with the org's admin key
logs="$(mktemp -d)"
pids=()
cleanup() {
  "$sovra" down "$here/deployment.yaml" --org "$here/org.yaml" --stop-ray >"$logs/down.log" 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
mkfifo "$logs/stdin"; exec 3<>"$logs/stdin"  # the servers watch stdin (they stop when it closes): a pipe, not /dev/null
endpoints="vllm-frankfurt:28091 vllm-paris:28092 vllm-dubai:28093"
for spec in $endpoints; do  # each answers `served-by <endpoint>` with the model it was asked for
  "$py" bench/openai_echo.py --port "${spec#*:}" --name "${spec%%:*}" --api-key-env DEMO_ENDPOINT_KEY \
    <&3 >"$logs/${spec%%:*}.log" 2>&1 &
  pids+=("$!")
done
for spec in $endpoints; do  # ready once it answers (401 without the key)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:${spec#*:}/v1/models" && break; sleep 0.1; done
done

echo "== sovra plan"
"$sovra" plan "$here/deployment.yaml" --org "$here/org.yaml" -o json >"$logs/plan.json"
"$py" - "$here/deployment.yaml" "$logs/plan.json" <<'PY'
import json, sys
from sovra.orchestrator.planning import load_deployments
residency = {d.name: d.spec.residency.describe() for d in load_deployments([sys.argv[1]])}
for d in json.load(open(sys.argv[2]))["deployments"]:
    where = ", ".join(f"{p['target']} ({p['zone']}/{p['country']})" for p in d["placements"])
    print(f"{d['deployment']:<11} residency {residency[d['deployment']]:<10} -> {where}")
PY

echo "== sovra up"
"$sovra" up "$here/deployment.yaml" --org "$here/org.yaml"

echo "== requests"
"$py" - "$port" <<'PY'
import sys, httpx
port = sys.argv[1]
KEYS = {"eu-helpdesk": "sk-test-localised-eu", "gulf-helpdesk": "sk-test-localised-gulf"}
FR = "Bonjour, je n'arrive plus à me connecter à mon compte depuis hier soir. Pouvez-vous m'aider ?"
AR = "مرحبا، لا أستطيع تسجيل الدخول إلى حسابي منذ أمس. هل يمكنك مساعدتي؟"

def ask(title, tenant, text, **headers):
    print(f"-- {title}: tenant {tenant}" + "".join(f", {k}: {v}" for k, v in headers.items()))
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                   headers={"Authorization": f"Bearer {KEYS[tenant]}", **headers},
                   json={"model": "support", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})
    if r.status_code != 200:
        sys.exit(f"{title} answered {r.status_code}: {r.text[:500]}")
    for h in ("x-sovra-variant", "x-sovra-locale", "x-sovra-target"):
        print(f"{h}: {r.headers.get(h)}")
    body = r.json()
    print(f"answer: {body['choices'][0]['message']['content']!r}, model received: {body['model']}")

ask("French (detected)", "eu-helpdesk", FR)
ask("Arabic (explicit locale)", "gulf-helpdesk", AR, **{"X-Sovra-Locale": "ar-AE"})
ask("Arabic from the EU tenant (detected)", "eu-helpdesk", AR)
ask("English from the Gulf tenant (detected)", "gulf-helpdesk",
    "Hello, I cannot log in to my account since yesterday evening. Can you help me?")
PY
sleep 1  # the last records reach the trail

echo "== sovra audit"
"$sovra" audit -o json | "$py" -c '
import json, sys
for r in sorted(json.load(sys.stdin), key=lambda r: r.get("time", "")):
    print(" ".join(f"{k}={r.get(k)}" for k in ("tenant", "deployment", "locale", "locale_source", "variant",
                                                 "target", "zone", "status")))
'
