"""The Pulumi Automation API wrapper: one stack per deployment and environment, inline programs, engine events
streamed to a display, and every engine failure mapped in one place (`errors_of`) to a Sovra error with its fix.

`pulumi` is imported inside the functions that drive the engine, so importing this module costs nothing and a
Ray-only `sovra up` never loads it. The Pulumi CLI is required (the Automation API runs it): `require_cli` is
called before anything is written, so a machine without it fails with the install hint and no side effect.

Secrets: the passphrase secrets provider by default. The passphrase comes from `PULUMI_CONFIG_PASSPHRASE` or
`PULUMI_CONFIG_PASSPHRASE_FILE` when set. Otherwise, for the local file backend only, Sovra generates one and keeps
it at `$SOVRA_HOME/pulumi/passphrase` (mode 0600), handed to the engine as a file, never printed: the state sits next
to it on the same disk, so a key kept there protects nothing less than the state itself, and it saves a user a
variable to lose. A shared backend (s3://, azblob://, gs://, https://) holds state several people or CI jobs use;
a key generated on one machine would lock the others out, so there the passphrase must be given explicitly (or a
KMS secrets provider through `SOVRA_PULUMI_SECRETS_PROVIDER`, e.g. `awskms://alias/sovra`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sovra.infra.home import sovra_home
from sovra.core.errors import (
    CloudCredentialsError,
    ConcurrentUpdateError,
    ProvisionError,
    PulumiMissingError,
    QuotaError,
    SecretsProviderError,
)

PROJECT = "sovra"
DEFAULT_ENV = "dev"
BACKEND_VAR = "SOVRA_PULUMI_BACKEND"
SECRETS_PROVIDER_VAR = "SOVRA_PULUMI_SECRETS_PROVIDER"
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
INSTALL_HINT = (
    "install the Pulumi CLI: `curl -fsSL https://get.pulumi.com | sh` (or `brew install pulumi/tap/pulumi`, "
    "`winget install pulumi`, `choco install pulumi`), then make sure `pulumi version` works in this shell. "
    "Sovra needs it only for cloud and Kubernetes targets; Ray-only plans run without it "
    "(`sovra up --ray-only` deploys the rest)")

if TYPE_CHECKING:  # the Pulumi SDK is imported where it is used: `sovra --help` and `sovra plan` pull none of it
    from pulumi.automation import EngineEvent, Stack
    from pulumi.automation.events import StepEventMetadata
    from rich.progress import Progress, TaskID

    from sovra.core.spec import Deployment, Target
    from sovra.core.spec.org import Endpoint
    from sovra.policies.plan import Placement


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StackSettings:
    """Where stacks live and how their secrets are encrypted; `env` names the environment (`<deployment>-<env>`)."""

    backend_url: str
    env: str = DEFAULT_ENV
    home: Path = field(default_factory=sovra_home)
    secrets_provider: str = "passphrase"

    @property
    def local(self) -> bool:
        return self.backend_url.startswith("file://")

    def stack_name(self, deployment: str) -> str:
        return stack_name(deployment, self.env)


def stack_name(deployment: str, env: str = DEFAULT_ENV) -> str:
    """One stack per deployment and environment."""
    return f"{deployment}-{env}"


def default_backend(home: Path | None = None) -> str:
    """The local file backend under the user's Sovra directory."""
    return f"file://{(home or sovra_home()) / 'pulumi'}"


_BACKEND = re.compile(r"^(file|s3|azblob|gs|https?)://\S+$")


def settings(backend: str | None = None, env: str = DEFAULT_ENV, home: Path | None = None) -> StackSettings:
    """Settings from the command line, then `SOVRA_PULUMI_BACKEND`, then the local default. Reads, writes nothing."""
    home = home or sovra_home()
    url = backend or os.environ.get(BACKEND_VAR) or default_backend(home)
    if not _BACKEND.match(url):
        raise ProvisionError(f"{url!r} is not a Pulumi backend URL; use file://PATH, s3://BUCKET, azblob://CONTAINER, "
                             "gs://BUCKET or https://api.pulumi.com (via --backend or $" + BACKEND_VAR + ")")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", env):
        raise ProvisionError(f"--env {env!r}: use letters, digits, '.', '_' or '-' (it becomes part of the stack name)")
    return StackSettings(url, env, home, os.environ.get(SECRETS_PROVIDER_VAR) or "passphrase")


def which_cli() -> str | None:
    """The `pulumi` executable on PATH, if any."""
    return shutil.which("pulumi")


def has_local_stack(s: StackSettings, deployment: str) -> bool:
    """Whether the local file backend holds state for the deployment's stack (project-scoped layout)."""
    root = Path(s.backend_url[len("file://"):]) / ".pulumi" / "stacks" / PROJECT
    name = s.stack_name(deployment)
    return s.local and any((root / f"{name}{ext}").exists() for ext in (".json", ".json.gz"))


def require_cli() -> str:
    """The `pulumi` executable, or PulumiMissingError with how to install it. Call before touching anything."""
    path = which_cli()
    if path is None:
        raise PulumiMissingError(INSTALL_HINT)
    return path


def engine_env(s: StackSettings) -> dict[str, str]:
    """Variables handed to the engine (never printed): the passphrase, as a file where Sovra keeps it."""
    env = {"PULUMI_SKIP_UPDATE_CHECK": "true"}
    if s.secrets_provider != "passphrase" or any(os.environ.get(v) is not None for v in PASSPHRASE_VARS):
        return env  # the engine reads the user's own variables from the inherited environment
    if not s.local:
        raise SecretsProviderError(
            f"the backend {s.backend_url} is shared, so its passphrase must be too: set PULUMI_CONFIG_PASSPHRASE "
            f"(or PULUMI_CONFIG_PASSPHRASE_FILE) to the team's passphrase, or set {SECRETS_PROVIDER_VAR} to a KMS "
            "secrets provider (awskms://…, azurekeyvault://…, gcpkms://…)")
    env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(_local_passphrase(s.home))
    return env


def _local_passphrase(home: Path) -> Path:
    path = home / "pulumi" / "passphrase"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path


# -------------------------------------------------------------------------------------------- error mapping

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN (temporary keys)",
            "or AWS_PROFILE", "and AWS_REGION")
AZURE_VARS = ("ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_TENANT_ID", "ARM_SUBSCRIPTION_ID",
              "or run `az login` (then ARM_SUBSCRIPTION_ID picks the subscription)")
DATABRICKS_VARS = ("DATABRICKS_HOST", "DATABRICKS_TOKEN",
                   "or DATABRICKS_CLIENT_ID + DATABRICKS_CLIENT_SECRET (service principal)")
SNOWFLAKE_VARS = ("SNOWFLAKE_ACCOUNT (or SNOWFLAKE_ORGANIZATION_NAME + SNOWFLAKE_ACCOUNT_NAME)", "SNOWFLAKE_USER",
                  "SNOWFLAKE_PASSWORD or SNOWFLAKE_PRIVATE_KEY", "SNOWFLAKE_ROLE")

# (cloud, variables, signatures): the texts each provider's engine plugin prints when it has no usable credentials.
_CREDENTIALS: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = (
    ("aws", AWS_VARS, re.compile(
        r"NoCredentialProviders|no valid credential sources|Invalid credentials configured"
        r"|unable to validate AWS AccessKeyID", re.IGNORECASE)),
    ("azure", AZURE_VARS, re.compile(
        r"DefaultAzureCredential failed|Please run 'az login'|make sure you have signed in via 'az login'"
        r"|failed to load application credentials", re.IGNORECASE)),
    ("databricks", DATABRICKS_VARS, re.compile(r"cannot configure default credentials", re.IGNORECASE)),
    ("snowflake", SNOWFLAKE_VARS, re.compile(
        r"\b390100\b|Incorrect username or password|\b260002\b.*password is empty"
        r"|could not build dsn for snowflake connection", re.IGNORECASE)),
)
_QUOTA = re.compile(r"ResourceLimitExceeded|QuotaExceeded|Not enough quota available|OperationNotAllowed[\s\S]{0,400}?quota",
                    re.IGNORECASE)
_CONFLICT = re.compile(r"Conflict: Another update is currently in progress|the stack is currently locked by", re.IGNORECASE)
_PASSPHRASE = re.compile(r"incorrect passphrase|unable to find either `PULUMI_CONFIG_PASSPHRASE`"
                         r"|passphrase must be set with PULUMI_CONFIG_PASSPHRASE", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^\s*(error:.*)$", re.MULTILINE)


def _text(exc_or_output: BaseException | str) -> str:
    return exc_or_output if isinstance(exc_or_output, str) else str(exc_or_output)


def _cli_missing(exc_or_output: BaseException | str) -> bool:
    # What the Automation API raises with no `pulumi` on PATH: subprocess's FileNotFoundError for the command
    # `pulumi` (reproduced in tests/unit/test_pulumi_errors.py by calling it with an empty PATH).
    if isinstance(exc_or_output, FileNotFoundError):
        return exc_or_output.filename in (None, "pulumi") or str(exc_or_output.filename).endswith("/pulumi")
    return bool(re.search(r"No such file or directory: '(?:[^']*/)?pulumi'|pulumi: command not found"
                          r"|executable file not found in \$PATH", _text(exc_or_output)))


def _quota_fix(text: str) -> str:
    if "ResourceLimitExceeded" in text:
        return ("ask AWS for more: Service Quotas → Amazon SageMaker → '<instance type> for endpoint usage' in the "
                "target's region, or plan elsewhere (`sovra plan` with that target's `available` set to what you have)")
    return ("ask Azure for more: Portal → Quotas (or `az quota`/`az ml compute list-usage`) for the VM family in the "
            "target's region, or plan elsewhere (`sovra plan` with that target's `available` set to what you have)")


def _detail(text: str) -> str:
    lines = [m.strip() for m in _ERROR_LINE.findall(text)]
    if lines:
        return lines[-1][:400]
    tail = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (tail[-1] if tail else "no output")[:400]


def errors_of(exc_or_output: BaseException | str) -> ProvisionError:
    """The Sovra error, with its fix, for an engine failure (an Automation API exception or the engine's output).

    The one place Pulumi failures are read; every command goes through it."""
    if isinstance(exc_or_output, ProvisionError):
        return exc_or_output
    if _cli_missing(exc_or_output):
        return PulumiMissingError(INSTALL_HINT)
    text = _text(exc_or_output)
    if type(exc_or_output).__name__ == "ConcurrentUpdateError" or _CONFLICT.search(text):
        return ConcurrentUpdateError(
            "another update of this stack is in progress (or one was interrupted and left its lock): wait for it to "
            "finish and run the command again; if no update is running any more, run `pulumi cancel --stack "
            "<deployment>-<env>` against the same backend to release the lock, then `sovra refresh`")
    for cloud, variables, pattern in _CREDENTIALS:
        if pattern.search(text):
            return CloudCredentialsError(cloud=cloud, variables=variables, detail=_detail(text))
    if _QUOTA.search(text):
        return QuotaError(detail=_detail(text), fix=_quota_fix(text))
    if _PASSPHRASE.search(text):
        return SecretsProviderError(
            "the stack's secrets cannot be decrypted: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE) "
            "to the passphrase the stack was created with; a local stack made by Sovra uses "
            "$SOVRA_HOME/pulumi/passphrase (unset both variables to use it)")
    return ProvisionError(f"the Pulumi engine failed: {_detail(text)}")


# ------------------------------------------------------------------------------------------- event display


@dataclass(frozen=True)
class Change:
    """One resource change the engine reported: what, which operation, and how it ended."""

    type: str
    name: str
    op: str
    status: str  # planned | running | done | failed


class EventDisplay:
    """Turns engine events into one line per resource change (plain) or a live rich progress list (terminal).

    `emit` receives each finished line; the engine calls `on_event` from its own thread, hence the lock."""

    def __init__(self, emit: Callable[[str], None], *, progress: Progress | None = None) -> None:
        self._emit = emit
        self._progress = progress  # None: plain lines
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self.changes: list[Change] = []
        self.errors: list[str] = []

    def on_event(self, event: EngineEvent) -> None:
        with self._lock:
            if event.resource_pre_event is not None:
                m = event.resource_pre_event.metadata
                self._step(m, "planned" if event.resource_pre_event.planning else "running")
            elif event.res_outputs_event is not None:
                self._step(event.res_outputs_event.metadata, "done")
            elif event.res_op_failed_event is not None:
                self._step(event.res_op_failed_event.metadata, "failed")
            elif event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
                self.errors.append(event.diagnostic_event.message.strip())

    def _step(self, m: StepEventMetadata, status: str) -> None:
        op = getattr(m.op, "value", str(m.op))
        if op == "same" or m.type == "pulumi:pulumi:Stack":
            return
        name = m.urn.rsplit("::", 1)[-1]
        change = Change(m.type, name, op, status)
        line = f"{_SIGN.get(op, '~')} {op:<8} {m.type} {name}: {status}"
        if self._progress is not None:
            task = self._tasks.get(m.urn)
            if task is None:
                self._tasks[m.urn] = self._progress.add_task(line, total=1, completed=status != "running")
            else:
                self._progress.update(task, description=line, completed=1 if status != "running" else 0)
        if status != "running":
            self.changes.append(change)
            if self._progress is None:
                self._emit(line)


_SIGN = {"create": "+", "delete": "-", "update": "~", "replace": "+-", "create-replacement": "++",
         "delete-replaced": "--", "refresh": "~", "read": ">"}


# ----------------------------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class StackResult:
    """What one engine operation did to one stack: the resource changes counted by op, and the stack outputs."""

    stack: str
    changes: Mapping[str, int]
    outputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(n for op, n in self.changes.items() if op != "same")


Program = Callable[[], None]


def open_stack(deployment: str, program: Program, s: StackSettings) -> Stack:
    """Create or select `<deployment>-<env>` in project `sovra` on the backend, with the inline program."""
    require_cli()
    try:
        from pulumi import automation as auto

        env = engine_env(s)
        opts = auto.LocalWorkspaceOptions(
            project_settings=auto.ProjectSettings(name=PROJECT, runtime="python",
                                                  backend=auto.ProjectBackend(url=s.backend_url)),
            secrets_provider=s.secrets_provider, env_vars=env)
        if s.local:
            Path(s.backend_url[len("file://"):]).mkdir(parents=True, exist_ok=True)
        return auto.create_or_select_stack(stack_name=s.stack_name(deployment), project_name=PROJECT,
                                           program=program, opts=opts)
    except ProvisionError:
        raise
    except Exception as exc:
        raise errors_of(exc) from exc


def _run(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        raise errors_of(exc) from exc


def _streams(display: EventDisplay) -> dict[str, Any]:
    return {"on_event": display.on_event, "on_output": lambda _line: None, "color": "never"}


def preview(stack: Stack, display: EventDisplay) -> StackResult:
    """What `up` would change; changes nothing."""
    r = _run(lambda: stack.preview(diff=False, **_streams(display)))
    return StackResult(stack.name, {getattr(k, "value", str(k)): v for k, v in (r.change_summary or {}).items()})


def up(stack: Stack, display: EventDisplay) -> StackResult:
    """Apply the program; returns the stack outputs (secret ones stay marked secret)."""
    r = _run(lambda: stack.up(**_streams(display)))
    return StackResult(stack.name, dict(r.summary.resource_changes or {}), dict(r.outputs or {}))


def refresh(stack: Stack, display: EventDisplay) -> StackResult:
    """Read every resource's live state into the stack; `changes` counts what drifted (update/delete)."""
    r = _run(lambda: stack.refresh(**_streams(display)))
    return StackResult(stack.name, dict(r.summary.resource_changes or {}))


def destroy(stack: Stack, display: EventDisplay) -> StackResult:
    """Delete every resource of the stack (the stack itself is kept, with its history)."""
    r = _run(lambda: stack.destroy(**_streams(display)))
    return StackResult(stack.name, dict(r.summary.resource_changes or {}))


def drift(result: StackResult) -> dict[str, int]:
    """The resources a refresh found changed or gone outside Sovra."""
    return {op: n for op, n in result.changes.items() if op in ("update", "delete") and n}


def residency_drift(stack: Stack, deployment: Deployment, targets: Iterable[Target]) -> tuple[str, ...]:
    """After a refresh: every resource of the stack that now lands outside its placements' regions (the guard's
    rule, read from the refreshed state)."""
    from sovra.infra.pulumi.drift import residency_drift as check
    from sovra.policies.guard import RegionRule

    rules = [RegionRule.for_placement(deployment.name, t, deployment.spec.residency) for t in targets]
    if not rules:
        return ()
    rule = rules[0]
    for r in rules[1:]:
        rule = rule.union(r)
    state = _run(stack.export_stack)
    return check(getattr(state, "deployment", None) or {}, rule)


# ------------------------------------------------------------------------------------- outputs -> endpoints

ENDPOINTS_OUTPUT = "endpoints"


def outputs_to_endpoints(outputs: Mapping[str, Any], targets: Iterable[Target]) -> list[Endpoint]:
    """Stack outputs as org-style `Endpoint` targets the router can reach (same id, place and price as the target
    the plan chose, plus the adapter's connection), so `deploy.up` routes to them as it routes to org endpoints.

    Contract with the components (`infra.pulumi.components.program`): an output named `endpoints` mapping each
    provisioned target id to its adapter's *non-secret* connection settings (SageMaker: `{endpoint, region}`;
    Azure ML: `{subscription_id, resource_group, workspace, endpoint, deployment}`). Keys and tokens are exported
    as separate Pulumi secrets and never copied here: the adapters read them from their SDK chain at run time."""
    from sovra.core.spec.org import Endpoint

    raw = outputs.get(ENDPOINTS_OUTPUT)
    value = getattr(raw, "value", raw)  # an automation OutputValue, or a plain mapping
    if getattr(raw, "secret", False):
        raise ProvisionError(f"the stack output `{ENDPOINTS_OUTPUT}` is secret; export connection settings in "
                             "clear and keys as separate secret outputs")
    if not value:
        return []
    if not isinstance(value, Mapping):
        raise ProvisionError(f"the stack output `{ENDPOINTS_OUTPUT}` should map target ids to connection settings, "
                             f"not {type(value).__name__}")
    by_id = {t.id: t for t in targets}
    unknown = sorted(set(value) - set(by_id))
    if unknown:
        raise ProvisionError(f"the stack exports endpoints for targets the plan does not know: {', '.join(unknown)}")
    from sovra.core.spec.target import Target

    # The target's own fields only: a cluster's (its router, token file, provision settings) are not an endpoint's.
    return [Endpoint.model_validate({**by_id[tid].model_dump(include=set(Target.model_fields)),
                                     "connection": dict(conn)})
            for tid, conn in sorted(value.items())]


def build_program(deployment: Deployment, placements: Iterable[Placement], targets: Mapping[str, Target],
                  settings: Mapping[str, Mapping[str, Any]] | None = None,
                  service_keys: Mapping[str, str] | None = None) -> Program:
    """The inline program for one deployment's provisioned placements, from the components package, each
    component with its target's settings (org.yaml `provision:`, by target id) and, for a KubeRay service whose
    org names no key, the key derived for it (`service_keys`, by target id; a Pulumi secret in the program).

    The one call into `infra.pulumi.program` (its `program(...)` returns the inline program; it registers every
    resource through the residency guard, so a tampered region aborts before any change)."""
    try:
        from sovra.infra.pulumi.program import program
    except ImportError as exc:
        raise ProvisionError(f"the Pulumi components are not available ({exc}); install Sovra with the "
                             "`pulumi` extra: pip install 'sovra[pulumi]'") from exc
    return program(tuple(placements), deployment, dict(targets), settings, service_keys)
