"""Snowflake Cortex: managed LLM functions inside a Snowflake account, priced per token (credits).

Where Cortex processes is an account parameter, CORTEX_ENABLED_CROSS_REGION, not a property of the endpoint: this
module translates its values into Sovra zones (and nowhere else does), reads the live value from the account, and
says where the router's backend is. The router's client is in `client` (it imports the connector).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from sovra.core.errors import ProviderError
from sovra.core.spec.zones import GLOBAL, SPAN_JOIN, zone_of
from sovra.providers.base import Connection, LiveSetting, Locator, Provider

if TYPE_CHECKING:
    from sovra.core.spec import Target

SETTING = "CORTEX_ENABLED_CROSS_REGION"

#: CORTEX_ENABLED_CROSS_REGION label -> the zone of the regions it lets Cortex use; DISABLED (None) is the account
#: region alone. From Snowflake's "Cross-region inference" page
#: (docs.snowflake.com/en/user-guide/snowflake-cortex/cross-region-inference): ANY_REGION is any Snowflake region of
#: any cloud; the cloud-wide AWS_GLOBAL, AZURE_GLOBAL and GCP_GLOBAL keep requests on one cloud but anywhere in the
#: world (so GLOBAL here: a cloud is not a place); the regional AWS_US, AWS_EU, AZURE_US, AZURE_EU, AWS_APJ (and
#: AZURE_APAC) keep them in that cloud's regions of one geography: US regions, EU regions, Asia-Pacific regions.
#: The account's own region is always a processing place too (Cortex answers there when the model is there, and goes
#: cross-region only otherwise), and it need not lie in the label's geography: AWS_EU is the value Snowflake sets
#: for London (eu-west-2) and Zurich (eu-central-2) accounts, and AWS_US for Canada (ca-central-1) ones (behaviour
#: change bundle 2026_06, docs.snowflake.com/release-notes/bcr-bundles/2026_06/bcr-2376), so a London account on
#: AWS_EU processes in the UK and the EU: `zone_for_cross_region` gives the span "EU+UK".
CROSS_REGION_ZONES: dict[str, str | None] = {
    "DISABLED": None, "AWS_EU": "EU", "AZURE_EU": "EU", "AWS_US": "US", "AZURE_US": "US",
    "AWS_APJ": "APAC", "AZURE_APAC": "APAC", "ANY_REGION": GLOBAL,
    "AWS_GLOBAL": GLOBAL, "AZURE_GLOBAL": GLOBAL, "GCP_GLOBAL": GLOBAL}

#: The connector's keyword arguments that carry secrets; each is read, where the router runs, from the environment
#: variable SNOWFLAKE_<NAME> (the Snowflake CLI's names), or from connections.toml via `connection_name`.
SECRET_KWARGS = ("password", "private_key_file", "private_key_file_pwd", "authenticator", "token", "token_file_path")


def cross_region_labels(value: str) -> list[str]:
    """The labels of a CORTEX_ENABLED_CROSS_REGION value (one label, or a comma list such as 'AWS_US,AWS_EU')."""
    return [part.strip().upper() for part in value.split(",") if part.strip()] or ["DISABLED"]


def zone_for_cross_region(value: str, home_zone: str | None) -> str:
    """Where a CORTEX_ENABLED_CROSS_REGION value lets Cortex process, for an account whose region is in
    `home_zone` (a zone, or a span of them). None means the region is taken to lie inside the labels' zones (a
    catalog's cross-region target names no country); with DISABLED alone nothing is then known, which is GLOBAL.

    The answer is the account's home zone together with every label's zone: one zone when they agree, else their
    span joined by `+` in sorted order ("EU+UK" for a London account on AWS_EU, "EU+US" for a Frankfurt one on
    AWS_US), which a residency accepts only when it allows every part. Any label that may go anywhere (ANY_REGION,
    a cloud's *_GLOBAL) or that Sovra does not know is GLOBAL: fail closed.
    """
    zones: set[str] = set(home_zone.split(SPAN_JOIN)) if home_zone else set()
    for label in cross_region_labels(value):
        if label != "DISABLED":
            zones.add(CROSS_REGION_ZONES.get(label) or GLOBAL)
    if GLOBAL in zones or not zones:
        return GLOBAL
    return SPAN_JOIN.join(sorted(zones))


class SnowflakeCortexConnection(Connection):
    """How the router reaches a Snowflake account (org.yaml `accounts: [{provider: snowflake-cortex, connection:
    ...}]`). Non-secret only: the password, key pair or token come from connections.toml (`connection_name`) or
    from SNOWFLAKE_PASSWORD / SNOWFLAKE_PRIVATE_KEY_FILE / ... where the router runs."""

    account: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$",
                                description="Account identifier, e.g. myorg-myaccount.")
    host: str | None = Field(default=None, min_length=1, description="A non-default host or URL (private link, "
                             "an emulator): `acct.privatelink.snowflakecomputing.com` or `http://127.0.0.1:8080`.")
    user: str | None = Field(default=None, min_length=1, description="Login name (else SNOWFLAKE_USER).")
    role: str | None = Field(default=None, min_length=1, description="Role holding SNOWFLAKE.CORTEX_USER.")
    warehouse: str | None = Field(default=None, min_length=1, description="Warehouse for Cortex SQL functions.")
    database: str | None = Field(default=None, min_length=1)
    connection_name: str | None = Field(default=None, min_length=1, description="A named connection in "
                                        "Snowflake's connections.toml ($SNOWFLAKE_HOME or ~/.snowflake).")
    timeout_s: float = Field(default=110.0, gt=0, le=3600, description="Longest wait for one Cortex answer; the "
                             "statement is cancelled in Snowflake after it.")

    @field_validator("host")
    @classmethod
    def _host_or_url(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"host {value!r}: a URL must be http:// or https://")
        return value


def connect_kwargs(params: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """snowflake.connector.connect() arguments for a backend's params: its non-secret settings, plus the secrets
    found in the environment. Holds secrets: never log it, never store it."""
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {"paramstyle": "qmark",  # bound server-side: the SQL text never carries the payload
                              "login_timeout": 20, "application": "Sovra", "client_session_keep_alive": True}
    for key in ("account", "user", "role", "warehouse", "database", "connection_name"):
        if params.get(key):
            kwargs[key] = params[key]
    if "connection_name" in kwargs:
        # the connector fixes its connections.toml path when first imported; resolve it now, so the SNOWFLAKE_HOME
        # of the process that connects is the one honoured
        toml = Path(env.get("SNOWFLAKE_HOME") or "~/.snowflake").expanduser() / "connections.toml"
        if toml.is_file():
            kwargs["connections_file_path"] = toml
    if "user" not in kwargs and env.get("SNOWFLAKE_USER"):
        kwargs["user"] = env["SNOWFLAKE_USER"]
    host = params.get("host")
    if host:
        if "://" in host:
            url = urlsplit(host)
            kwargs.update(host=url.hostname, protocol=url.scheme, port=url.port or (443 if url.scheme == "https"
                                                                                   else 80))
        else:
            kwargs["host"] = host
    for name in SECRET_KWARGS:
        value = env.get(f"SNOWFLAKE_{name.upper()}")
        if value:
            kwargs[name] = value
    return kwargs


def base_url(params: Mapping[str, str]) -> str:
    """The account's URL for the Cortex REST API (same host as SQL)."""
    host = params.get("host")
    if host and "://" in host:
        return host.rstrip("/")
    # Snowflake hostnames use '-' where account identifiers may hold '_'
    return "https://" + (host or f"{params['account']}.snowflakecomputing.com").replace("_", "-")


class SnowflakeCortex(Provider):
    """CORTEX_ENABLED_CROSS_REGION decides where Cortex may process: in-region, a cloud's geography, or ANY_REGION."""

    name = "snowflake-cortex"
    component = "sovra.providers.snowflake.component:SnowflakeCortexAccess"
    extra = "snowflake"
    sdk_module = "snowflake.connector"
    scopes: ClassVar[dict[str, str | None]] = {label.lower(): zone for label, zone in CROSS_REGION_ZONES.items()}
    connection_model = SnowflakeCortexConnection
    # not user, role or connection_name: a direct-mode app signs in as itself (SNOWFLAKE_USER, ...)
    direct_params = frozenset({"account", "host", "warehouse", "database", "timeout_s"})

    def describe(self) -> str:
        return "Snowflake Cortex AI functions (per token; cross-region setting decides the zone)"

    def direct_url(self, backend) -> str | None:
        if not backend.params.get("account") and not backend.params.get("host"):
            return None
        return base_url(backend.params)

    def zone_for_scope(self, scope: str, country: str | None) -> str:
        """One label as the base class does (unknown labels rejected); a comma list, or a label whose geography
        does not hold the region's country, is the span of its labels' zones and the region's own (see
        `zone_for_cross_region`)."""
        labels = cross_region_labels(scope)
        for label in labels:
            if label.lower() not in self.scopes:
                super().zone_for_scope(label, country)  # raises, naming the valid labels
        if labels == ["DISABLED"]:
            return super().zone_for_scope(scope, country)  # in-region: needs the target's country
        return zone_for_cross_region(scope, zone_of(country) if country else None)

    def client(self):
        from sovra.providers.snowflake.client import CortexClient

        return CortexClient()

    def locate(self, target: Target, model: str, connection: Connection) -> Locator:
        if not isinstance(connection, SnowflakeCortexConnection) or not connection.account:
            raise ProviderError(
                f"{target.id}: Sovra needs the Snowflake account to route to; add to org.yaml "
                "`accounts: [{provider: snowflake-cortex, connection: {account: <org-account>, user: <login>}}]` "
                "(credentials stay in connections.toml or SNOWFLAKE_PASSWORD / SNOWFLAKE_PRIVATE_KEY_FILE)")
        offering = target.model_price(model)
        address = (offering.id or offering.name) if offering else model
        params = {k: str(v) for k, v in connection.model_dump(exclude_none=True).items()}
        return Locator(address, params)

    def live_settings(self, target: Target, connection: Connection) -> list[LiveSetting]:
        located = self.locate(target, target.models[0].name if target.models else "-", connection)
        sdk = self.sdk()
        try:
            with sdk.connect(**connect_kwargs(located.params)) as conn, conn.cursor() as cur:
                cur.execute(f"SHOW PARAMETERS LIKE '{SETTING}' IN ACCOUNT")
                columns = [d.name.lower() for d in cur.description]
                row = dict(zip(columns, cur.fetchone() or (), strict=False))
        except sdk.Error as exc:
            raise ProviderError(f"{target.id}: cannot read {SETTING} from Snowflake account "
                                f"{located.params['account']}: {exc.msg or exc}; the role needs to see account "
                                "parameters (e.g. ACCOUNTADMIN)") from None
        value = str(row.get("value") or "DISABLED")
        home = zone_of(target.country) if target.country else target.zone
        return [LiveSetting(target=target.id, setting=SETTING, value=value,
                            zone=zone_for_cross_region(value, home), fix=pin_fix(target, str(row.get("level") or "")))]


def pin_fix(target: Target, level: str) -> str:
    """How to pin the account to the target's catalog scope. Snowflake announced that accounts which never set the
    parameter will be switched to cross-region, so the fix says to set it explicitly even when it already reads
    right."""
    wanted = (target.scope or "DISABLED").upper()
    unset = "it is not set on the account (Snowflake's default applies); " if not level else ""
    return (f"{unset}run as ACCOUNTADMIN: ALTER ACCOUNT SET {SETTING} = '{wanted}' — set it explicitly even where "
            "it already reads so: Snowflake announced that accounts which never set it are switched to cross-region")
