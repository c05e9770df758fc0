"""Any OpenAI-compatible server the company runs (NVIDIA NIM, vLLM, TGI, llama.cpp): declared in org.yaml under
`endpoints:` with its URL, place and price, and reached over plain HTTP by the router's pooled client."""

from __future__ import annotations

from pydantic import Field

from sovra.core.errors import ProviderError
from sovra.providers.base import Connection, Locator, Provider


class OpenAICompatibleConnection(Connection):
    url: str = Field(pattern=r"^https?://", description="Base URL, without /v1 (e.g. http://nim.paris.internal:8000).")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the server's API key (sent as a bearer token); "
                    "the key itself never appears in org.yaml, the routing table or the audit trail.")


class OpenAICompatible(Provider):
    """A server speaking /v1/chat/completions and /v1/embeddings; where it runs is what org.yaml declares."""

    name = "openai-compatible"
    extra = None
    sdk_module = None
    provisioner = "none"
    connection_model = OpenAICompatibleConnection
    # not `api_key_env`: a direct-mode app names its own key variable per host (the SDK's `direct_keys`)
    direct_params = frozenset({"served_model"})

    def describe(self) -> str:
        return "An OpenAI-compatible server you run (NVIDIA NIM, vLLM, TGI), declared in org.yaml `endpoints:`"

    def direct_url(self, backend) -> str | None:
        return backend.address

    def client(self):
        from sovra.providers.clients import HttpClient

        return HttpClient()

    def locate(self, target, model, connection) -> Locator:
        if not isinstance(connection, OpenAICompatibleConnection):
            raise ProviderError(f"{target.id}: an openai-compatible endpoint needs `connection: {{url: ...}}`")
        params = {"api_key_env": connection.api_key_env} if connection.api_key_env else {}
        offered = target.model_price(model)
        if offered is not None and offered.id:  # the name the server knows the model by (`models[].id`)
            params["served_model"] = offered.id
        return Locator(connection.url.rstrip("/"), params)
