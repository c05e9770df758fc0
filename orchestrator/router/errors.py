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


class AmbiguousModel(RouterError):
    """A bare model name served by deployments that differ in residency or policy: the client must pick one."""

    status, type, code = 400, "invalid_request_error", "ambiguous_model"


class RequestTooLarge(RouterError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UpstreamTimeout(RouterError):
    status, type, code = 504, "api_error", "upstream_timeout"


class BackendRefused(RouterError):
    """Every allowed backend that was tried refused the request the same way (throttled, the backend's own
    credentials rejected, the endpoint missing) and none was left: the client gets that status, not a 503."""

    type = "api_error"

    def __init__(self, message: str, *, status: int, code: str, retry_after_s: int | None = None):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)} if retry_after_s else None)
        self.status, self.code = status, code
        self.type = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "api_error")


# -- one attempt's verdict, classified once by the transport that made it ------------------------------------------
# The dispatcher never guesses: a transport maps its library's failures onto these in one function, and the
# dispatcher resends only what was never delivered or what the backend said it did not process.


class AttemptFailed(Exception):
    """One send to one backend failed. `resend` says whether another allowed backend may be tried; `outcome` is
    what the audit trail records for the attempt; `down` says the backend is known to have no live replica."""

    resend: bool = False
    outcome: str = "failed"
    counts: bool = True  # against the backend's circuit breaker

    def __init__(self, message: str, *, down: bool = False):
        super().__init__(message)
        self.down = down


class NotDelivered(AttemptFailed):
    """The payload never left (connect refused, no live replica): safe to try another allowed backend."""

    resend, outcome = True, "not_sent"


class Refused(AttemptFailed):
    """The backend received the request and answered that it did not process it (HTTP 503, 429, its own
    credentials rejected, no such endpoint). `status` is what the client gets when every allowed backend refused
    the same way (503 otherwise); `retry_after_s` is the backend's own hint when it throttled."""

    resend, outcome = True, "refused"

    def __init__(self, message: str, *, throttled: bool = False, status: int | None = None,
                 retry_after_s: int | None = None, down: bool = False):
        super().__init__(message, down=down)
        self.throttled = throttled
        self.counts = not throttled  # a throttled backend is busy, not broken
        self.status = status if status is not None else (429 if throttled else 503)
        self.retry_after_s = retry_after_s if retry_after_s is not None else (1 if throttled else None)


class Failed(AttemptFailed):
    """The payload may have been received (dropped connection, 5xx, engine crash): never resent anywhere."""


class TimedOut(Failed):
    """No answer in time after the payload left: never resent, it may still be processed."""

    outcome = "timeout"
