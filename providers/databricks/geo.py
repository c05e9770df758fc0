"""Where a Databricks workspace's model serving really processes: its cross-Geo processing setting.

Foundation Model APIs and model serving are "Designated Services": they process in the workspace's Geo unless
cross-Geo processing is enabled, and then in any Geo (GLOBAL). The toggle ("Enforce data processing within
workspace Geography for Designated Services", account console > Workspaces > <workspace> > Security and
compliance) has no API: neither the workspace Settings API (`/api/2.0/settings/types/...`), nor Settings v2
(`/api/2.1/settings/{name}`), nor the account API exposes it (terraform-provider-databricks issues #5031 and
#5888 ask for one and are labelled needs-api). The closest real, readable setting is the compliance security
profile on the same tab (`GET /api/2.0/settings/types/shield_csp_enablement_ws_db/names/default`), which sets the
default: cross-Geo processing is on by default for workspaces outside the US and EU Geos without that profile.

So the org's declaration (`connection.cross_geo`) decides, and without one Sovra fails closed: GLOBAL.

With cross-Geo processing disabled, serving still processes anywhere in the workspace's Geo, not in its region's
country: `geo_of` gives that Geo as a span of places (see `core.spec.zones`).
"""

from __future__ import annotations

from typing import Any

from sovra.core.errors import ProviderError
from sovra.core.spec.zones import GLOBAL, parts, zone_of
from sovra.providers.base import LiveSetting

# Databricks Geos on AWS and GCP, per docs.databricks.com/aws/en/resources/databricks-geos ("Geo: comprising
# regions in"): Americas (United States, Brazil, Canada), Asia (Hong Kong, Japan, Korea, Singapore), Australia & New
# Zealand, Europe (EEA, Switzerland, UK), India, Mainland China, Middle East and Africa (Qatar, South Africa, UAE).
# Europe's span is EU+UK+CH: the EEA's members outside the EU (NO, IS, LI) host no AWS or GCP region Databricks runs
# in; should one open, add EEA here, which makes the Geo stricter, never looser.
_GEOS: tuple[str, ...] = ("US+CA+BR", "HK+JP+KR+SG", "AU+NZ", "EU+UK+CH", "IN", "CN", "QA+ZA+AE")
#: Azure Databricks follows Azure geographies (learn.microsoft.com/azure/databricks/resources/databricks-geos):
#: most are one country (Germany, France, Sweden, Norway, Switzerland, UK, ...: the region's country, from
#: providers/azure/regions.py); these hold two.
_AZURE_GEOGRAPHIES = {"westeurope": "IE+NL", "northeurope": "IE+NL",  # "Europe"
                      "eastasia": "HK+SG", "southeastasia": "HK+SG"}  # "Asia Pacific"


def geo_of(region: str, country: str | None) -> str:
    """Where a workspace in `region` (country `country`) processes with cross-Geo processing disabled: its Geo, as a
    span ("EU+UK+CH") or, for a one-country Geo, the country's zone. ValueError for a region Sovra cannot place."""
    from sovra.providers.aws.common import REGION_COUNTRY as AWS
    from sovra.providers.azure.regions import REGION_COUNTRY as AZURE

    key = region.replace(" ", "").lower()
    if key in _AZURE_GEOGRAPHIES:
        return _AZURE_GEOGRAPHIES[key]
    if key in AZURE:  # an Azure Databricks workspace: its geography is its region's country
        return zone_of(AZURE[key])
    country = country or AWS.get(key)
    if country is None:
        raise ValueError(f"databricks: cannot tell the Geo of region {region!r} without the target's `country`")
    for geo in _GEOS:
        members = geo.split("+")
        if country in members or zone_of(country) in members:
            return geo if "+" in geo else zone_of(country)
    raise ValueError(f"databricks: {country} is in no Databricks Geo Sovra knows; add it to providers/databricks/geo.py")


SETTING = "cross-Geo processing (Designated Services)"
FIX = ("have an account admin turn ON 'Enforce data processing within workspace Geography for Designated "
       "Services' for {host} (account console > Workspaces > <workspace> > Security and compliance), which disables "
       "cross-Geo processing, then declare it in org.yaml: `accounts: [{{provider: databricks, connection: "
       "{{host: {host}, cross_geo: disabled}}}}]` (no Databricks API can read it back yet)")
#: Settings are read when `sovra up`/`refresh` runs: GETs, which the SDK may retry safely, for at most this long.
RETRY_TIMEOUT_S = 10


def cross_geo_setting(target: Any, connection: Any, host: str) -> LiveSetting:
    """The workspace's cross-Geo processing as a LiveSetting: GLOBAL unless the org declares it disabled."""
    csp = compliance_profile(host, connection.profile)
    in_geo = target.zone  # the Geo's span (a cross-Geo target is GLOBAL, whatever the workspace says)
    profile = {True: "on", False: "off", None: "unreadable (needs a workspace admin)"}[csp]
    if connection.cross_geo == "disabled":
        value, zone = "disabled (declared in org.yaml)", in_geo
    elif connection.cross_geo == "enabled":
        value, zone = "enabled (declared in org.yaml)", GLOBAL
    elif csp is False and not {"EU", "US"} & set(parts(in_geo)):
        value, zone = "enabled (Databricks' default outside the US and EU without the compliance profile)", GLOBAL
    else:
        value, zone = "unverified (no API exposes it and org.yaml does not declare it)", GLOBAL
    return LiveSetting(target=target.id, setting=SETTING, value=f"{value}; compliance security profile {profile}",
                       zone=zone, fix=FIX.format(host=host))


def compliance_profile(host: str, profile: str | None) -> bool | None:
    """Whether the workspace has the compliance security profile; None when the caller may not read it."""
    from databricks.sdk.errors import NotFound, PermissionDenied

    try:
        settings = _workspace(host, profile).settings.compliance_security_profile.get()
    except (PermissionDenied, NotFound):
        return None
    except Exception as exc:  # noqa: BLE001  (mapped in one place, below)
        raise _provider_error(host, exc) from None
    csp = settings.compliance_security_profile_workspace
    return bool(csp and csp.is_enabled)


def _workspace(host: str, profile: str | None) -> Any:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    try:
        config = Config(host=host, profile=profile, http_timeout_seconds=10, retry_timeout_seconds=RETRY_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001
        raise _provider_error(host, exc) from None
    return WorkspaceClient(config=config)


def _provider_error(host: str, exc: Exception) -> ProviderError:
    """databricks-sdk failures while reading settings -> one ProviderError saying what to do."""
    from databricks.sdk.errors import DatabricksError, Unauthenticated

    if isinstance(exc, Unauthenticated):
        why = "Databricks refused the credentials Sovra found"
    elif isinstance(exc, DatabricksError):  # an IOError too: checked before the network failures
        why = "the workspace answered an error"
    elif isinstance(exc, ValueError):  # Config: no host or no credentials in the chain
        why = "databricks-sdk found no usable credentials"
    elif isinstance(exc, (TimeoutError, ConnectionError, OSError)):
        why = "the workspace did not answer"
    else:
        why = "reading the workspace's settings failed"
    return ProviderError(f"databricks {host}: {why} ({type(exc).__name__}: {str(exc)[:300]}); set DATABRICKS_TOKEN "
                         "or name a ~/.databrickscfg profile in the account's `connection: {profile: ...}`")
