"""Router errors, each carrying its HTTP status and OpenAI-style `type`/`code`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from sovra.core.errors import SovraError

log = logging.getLogger("sovra.router")


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


class CrossSite(RouterError):
    """A request a web page could have made a browser send (another origin, a rebound DNS name, a preflight)."""

    status, type, code = 403, "permission_error", "cross_site_refused"


class UnsupportedMediaType(RouterError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class DirectModeDisabled(RouterError):
    status, type, code = 403, "permission_error", "direct_mode_disabled"


class ScrapeKeyRequired(RouterError):
    status, type, code = 403, "permission_error", "scrape_key_required"


class ModelNotFound(RouterError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Saturated(RouterError):
    status, type, code = 429, "rate_limit_error", "backends_saturated"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class BudgetExceeded(RouterError):
    """A USD budget of the caller's tenant or deployment has no room for this request this month."""

    status, type, code = 429, "rate_limit_error", "budget_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, resets: str):
        super().__init__(message, headers={"Retry-After": str(retry_after_s), "X-Sovra-Budget-Reset": resets})
        self.retry_after_s = retry_after_s


class RateLimited(BudgetExceeded):
    """A tokens- or requests-per-minute quota has no room for this request in this minute."""

    code = "rate_limited"


class SpendUnavailable(RouterError):
    """Fail closed: the spend store cannot be reached to check a budget, so nothing is sent."""

    status, type, code = 503, "service_unavailable", "spend_unavailable"


class NoAllowedBackend(RouterError):
    """Fail closed: no backend that this request's residency allows is left; the payload went nowhere."""

    status, type, code = 503, "service_unavailable", "no_allowed_backend"


class AuditUnavailable(RouterError):
    """The audit trail cannot be written, and the org has not opted out: nothing is sent unrecorded."""

    status, type, code = 503, "service_unavailable", "audit_unavailable"


class UpstreamError(RouterError):
    status, type, code = 502, "api_error", "upstream_error"


class AmbiguousModel(RouterError):
    """A bare model name served by deployments that differ in residency or policy: the client must pick one."""

    status, type, code = 400, "invalid_request_error", "ambiguous_model"


class RequestTooLarge(RouterError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UpstreamTimeout(RouterError):
    status, type, code = 504, "api_error", "upstream_timeout"


class TenantBusy(RouterError):
    """The tenant already has as many requests in flight as it may (`max_concurrent`): one tenant cannot take the
    whole router from the others. Nothing was read or sent; the client may retry after `Retry-After`."""

    status, type, code = 429, "rate_limit_error", "tenant_concurrency_limit"

    def __init__(self, message: str, *, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotSent(RouterError):
    """An adapter could not build its vendor's request from this one, so its payload never left: the attempt is
    `not_sent` and the backend's breaker is untouched, since the backend did nothing wrong. This one is a 500 (a
    bug in the translation); `Untranslatable` is the request's own fault."""

    status, type, code = 500, "api_error", "internal_error"


class Untranslatable(NotSent, BadRequest):
    """The request asks for what this backend cannot carry (a field its vendor's format has no place for): a 400,
    and nothing was sent."""

    status, type, code = 400, "invalid_request_error", "invalid_request"


class BackendRefused(RouterError):
    """Every allowed backend that was tried refused the request the same way (throttled, the backend's own
    credentials rejected, the endpoint missing) and none was left: the client gets that status, not a 503."""

    type = "api_error"

    def __init__(self, message: str, *, status: int, code: str, retry_after_s: int | None = None):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)} if retry_after_s else None)
        self.status, self.code = status, code
        self.type = {429: "rate_limit_error", 401: "authentication_error"}.get(status, "api_error")


# -- what a backend's own rejection (4xx) may tell the client and the trail ---------------------------------------
# A backend's error `type` and `code` reach the client and the audit trail's `outcome`; a backend may put anything
# there (one quoted the whole prompt in `code`). Only these fixed words pass; the message is cut and flattened.

#: OpenAI's error types; any other becomes `invalid_request_error`.
UPSTREAM_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                            "rate_limit_error", "api_error"})
#: Error codes OpenAI documents (and vLLM, TGI, NIM reuse) for requests they reject; any other is `upstream_rejected`.
UPSTREAM_CODES = frozenset({"context_length_exceeded", "invalid_value", "invalid_type", "missing_required_parameter",
                            "unsupported_parameter", "unsupported_value", "model_not_found", "content_filter",
                            "content_policy_violation", "string_above_max_length", "invalid_prompt",
                            "invalid_request", "invalid_request_error", "rate_limit_exceeded", "insufficient_quota"})
#: The longest message from a backend passed to the client.
MAX_UPSTREAM_MESSAGE = 1000


def upstream_words(kind: Any, code: Any, message: Any) -> tuple[str, str, str]:
    """A backend's (type, code, message) as the router passes them on: type and code from the fixed vocabularies,
    the message flattened to one line and cut to MAX_UPSTREAM_MESSAGE characters."""
    kind = kind if isinstance(kind, str) and kind in UPSTREAM_TYPES else "invalid_request_error"
    code = code if isinstance(code, str) and code in UPSTREAM_CODES else "upstream_rejected"
    text = " ".join(str(message or "upstream rejected the request").split())
    if len(text) > MAX_UPSTREAM_MESSAGE:
        text = text[:MAX_UPSTREAM_MESSAGE - 1] + "…"
    return kind, code, text


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


@contextlib.contextmanager
def building(where: str) -> Iterator[None]:
    """Wraps an adapter's translation of a request into its vendor's format, before anything is sent: whatever it
    raises is `NotSent` (a verdict already made, such as missing credentials, stays as it is). A value the
    translation cannot take (ValueError, TypeError, KeyError, a BadRequest) is the request's fault: a 400."""
    try:
        yield
    except (NotSent, AttemptFailed):
        raise
    except RouterError as exc:
        if isinstance(exc, BadRequest):
            raise Untranslatable(exc.message) from None
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise Untranslatable(f"{where} cannot take this request ({type(exc).__name__}: {str(exc)[:300]}); nothing "
                             "was sent") from None
    except Exception as exc:
        log.exception("translating a request for %s failed", where)
        raise NotSent(f"translating the request for {where} failed ({type(exc).__name__}); nothing was sent") \
            from exc
