"""Azure region -> the country its datacentres are in, so that the azure-ml adapter can translate a region-bound
deployment type (Standard, DataZone) into a Sovra zone. Data only; the translation is in `providers/azure_ml.py`.

Read from Azure's public "Azure geographies" / region list (learn.microsoft.com/azure/reliability/regions-list).
A region missing here is an error, never a guess: residency must not depend on a default.
"""

from __future__ import annotations

from types import MappingProxyType

_REGIONS: dict[str, str] = {
    # United States (public cloud and Azure Government)
    "eastus": "US", "eastus2": "US", "centralus": "US", "northcentralus": "US", "southcentralus": "US",
    "westcentralus": "US", "westus": "US", "westus2": "US", "westus3": "US",
    "usgovvirginia": "US", "usgovarizona": "US", "usgovtexas": "US", "usgoviowa": "US",
    # European Union
    "francecentral": "FR", "francesouth": "FR", "germanywestcentral": "DE", "germanynorth": "DE",
    "northeurope": "IE", "westeurope": "NL", "swedencentral": "SE", "swedensouth": "SE", "italynorth": "IT",
    "polandcentral": "PL", "spaincentral": "ES", "austriaeast": "AT", "belgiumcentral": "BE", "denmarkeast": "DK",
    # Europe outside the EU
    "uksouth": "GB", "ukwest": "GB", "switzerlandnorth": "CH", "switzerlandwest": "CH", "norwayeast": "NO",
    "norwaywest": "NO",
    # Americas
    "canadacentral": "CA", "canadaeast": "CA", "brazilsouth": "BR", "brazilsoutheast": "BR", "mexicocentral": "MX",
    "chilecentral": "CL",
    # Asia Pacific
    "japaneast": "JP", "japanwest": "JP", "koreacentral": "KR", "koreasouth": "KR", "southeastasia": "SG",
    "eastasia": "HK", "centralindia": "IN", "southindia": "IN", "westindia": "IN", "australiaeast": "AU",
    "australiasoutheast": "AU", "australiacentral": "AU", "australiacentral2": "AU", "newzealandnorth": "NZ",
    "indonesiacentral": "ID", "malaysiawest": "MY",
    # Middle East and Africa
    "uaenorth": "AE", "uaecentral": "AE", "qatarcentral": "QA", "israelcentral": "IL", "southafricanorth": "ZA",
    "southafricawest": "ZA",
    # China (operated by 21Vianet)
    "chinaeast2": "CN", "chinaeast3": "CN", "chinanorth2": "CN", "chinanorth3": "CN",
}

#: Azure region name (lower case, no spaces) -> ISO 3166-1 alpha-2 country of its datacentres (read-only).
REGION_COUNTRY = MappingProxyType(_REGIONS)


def country_of(region: str) -> str:
    """The country of an Azure region ("France Central" and "francecentral" alike); ValueError names the fix."""
    key = region.replace(" ", "").strip().lower()
    try:
        return REGION_COUNTRY[key]
    except KeyError:
        raise ValueError(f"azure-ml: unknown Azure region {region!r}; add it with its country to "
                         "providers/azure/regions.py") from None
