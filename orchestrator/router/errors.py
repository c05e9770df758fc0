"""Router errors, each carrying its HTTP status and OpenAI-style `type`/`code`."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import SovraError


class RouterError(SovraError):
    """An error answered to the client as `{"error": {"message", "type", "code"}}`."""

    status = 500
    type = "api_error"
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI-style JSON body."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}}


class BadRequest(RouterError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidResidency(RouterError):
    status, type, code = 400, "invalid_request_error", "invalid_residency"


class Unauthorized(RouterError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class ResidencyWidening(RouterError):
    status, type, code = 403, "permission_error", "residency_not_allowed"


class ModelNotFound(RouterError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Saturated(RouterError):
    status, type, code = 429, "rate_limit_error", "backends_saturated"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class NoAllowedBackend(RouterError):
    """Fail closed: no backend that this request's residency allows is left; the payload went nowhere."""

    status, type, code = 503, "service_unavailable", "no_allowed_backend"


class UpstreamError(RouterError):
    status, type, code = 502, "api_error", "upstream_error"
