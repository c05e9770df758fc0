"""OpenTelemetry spans for every request and every attempt, in the GenAI semantic conventions, with W3C trace context
carried to HTTP backends. Off unless the standard `OTEL_*` variables say where spans go, where the router runs.

A request is one SERVER span (`chat support`): `gen_ai.operation.name`, `gen_ai.request.model`,
`gen_ai.response.model`, `gen_ai.usage.*` and Sovra's own `sovra.*` (tenant, deployment, variant, locale, residency,
target, zone, country, outcome, cost). Each send is a CLIENT span under it (`chat <model>`), opened immediately before
the payload may leave, with `gen_ai.system` and the target; its W3C context goes in the request to the backend
(`core.trace_context`). Spans carry metadata only, the same facts as the audit trail: never a prompt, an answer, a
header other than the trace context, or a key (a test greps exported spans for a canary).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sovra.core.backends import Backend
from sovra.core.trace_context import OUTGOING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("sovra.router")

#: The exporters Sovra builds from `OTEL_TRACES_EXPORTER`; the default when only an endpoint is set is `otlp`.
EXPORTERS = ("otlp", "console")


class Tracing:
    """The router's tracer; None in `RouterState` when tracing is off, so the request path pays one `is None`."""

    def __init__(self, provider: TracerProvider):
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("sovra.router")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def with_exporter(cls, exporter: SpanExporter, *, batch: bool = True, service: str = "sovra-router") -> Tracing:
        """Spans to `exporter` (an in-memory one in tests: `batch=False` exports each span as it ends)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=_sampler(),
                                  span_limits=SpanLimits(max_span_attribute_length=256))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tracing | None:
        """Tracing as the standard variables configure it, or None: on when `OTEL_TRACES_EXPORTER` is `otlp` or
        `console`, or when it is unset and an OTLP endpoint is (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`); off when
        `OTEL_SDK_DISABLED=true`. The OTLP exporter (http/protobuf, or grpc by `OTEL_EXPORTER_OTLP_PROTOCOL`) reads
        its endpoint, headers and timeouts from the same variables itself, so a collector's token stays in the
        environment, never in Sovra's config. Missing the `otel` extra: logged, and the router runs untraced."""
        env = os.environ if env is None else env
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        chosen = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not chosen and endpoint:
            chosen = "otlp"
        if chosen in ("", "none"):
            return None
        if chosen not in EXPORTERS:
            log.error("OTEL_TRACES_EXPORTER=%s is not one Sovra builds (%s); the router runs without traces",
                      chosen[:40], ", ".join(EXPORTERS))
            return None
        try:
            exporter = _exporter(chosen, env)
        except ImportError:
            log.error("tracing is configured (OTEL_TRACES_EXPORTER=%s) but the OpenTelemetry SDK or OTLP exporter "
                      "is not installed where the router runs; install `sovra[otel]`. The router runs without "
                      "traces", chosen)
            return None
        return cls.with_exporter(exporter, service=env.get("OTEL_SERVICE_NAME") or "sovra-router")

    def request(self, op: str, headers: Mapping[str, str]) -> RequestTrace:
        """The SERVER span of one (authenticated) request, continuing the caller's trace when it sent a W3C
        `traceparent`. Never its `tracestate`: that is the caller's free text (up to 32 members), which would travel
        on to every backend; nor its sampling flag, which the operator's sampler decides (`_sampler`)."""
        value = headers.get("traceparent")
        parent = self._propagator.extract({"traceparent": value}) if value and len(value) <= 64 else None
        span = self.tracer.start_span(op, context=parent, kind=self._trace.SpanKind.SERVER,
                                      attributes={"gen_ai.operation.name": _OPERATIONS.get(op, op),
                                                  "sovra.surface": op})
        return RequestTrace(self, span, _OPERATIONS.get(op, op))

    def close(self) -> None:
        """Export what is buffered (a replica stopping)."""
        try:
            self.provider.shutdown()
        except Exception:  # a collector that is down must not stop the replica's shutdown
            log.warning("flushing traces at shutdown failed", exc_info=True)


#: the router's surfaces -> `gen_ai.operation.name` (responses and completions are sent as the chat they become)
_OPERATIONS = {"chat": "chat", "embed": "embeddings", "responses": "chat", "completions": "text_completion"}


def _sampler(env: Mapping[str, str] | None = None) -> Any:
    """The operator's sampler (`OTEL_TRACES_SAMPLER`: always_on, always_off, traceidratio with
    `OTEL_TRACES_SAMPLER_ARG`; a `parentbased_*` form means the same here) for every request span, whatever the
    caller's `traceparent` says is sampled: a caller can neither switch the operator's traces off nor force them on.
    Attempt spans follow their request span."""
    from opentelemetry.sdk.trace import sampling

    env = os.environ if env is None else env
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower().removeprefix("parentbased_")
    root: Any = sampling.ALWAYS_ON
    if name == "always_off":
        root = sampling.ALWAYS_OFF
    elif name == "traceidratio":
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
        root = sampling.TraceIdRatioBased(min(max(ratio, 0.0), 1.0))
    return sampling.ParentBased(root=root, remote_parent_sampled=root, remote_parent_not_sampled=root)


def _exporter(chosen: str, env: Mapping[str, str]) -> SpanExporter:
    if chosen == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()


class RequestTrace:
    """One request's spans, filled as it goes (as the audit's `RequestContext` is)."""

    __slots__ = ("_attempts", "_op", "_served", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Any, op: str):
        self._tracing, self.span, self._op = tracing, span, op
        self._attempts: list[Any] = []  # open attempt spans, oldest first
        self._served: Any = None  # the attempt that answered: kept open for the answer's usage

    def routed(self, attributes: Mapping[str, Any]) -> None:
        """What the request resolved to (deployment, model, variant, locale, tenant, residency)."""
        for key, value in attributes.items():
            if value is not None:
                self.span.set_attribute(key, value)
        model = attributes.get("gen_ai.request.model")
        if model:
            self.span.update_name(f"{self._op} {attributes.get('sovra.deployment') or model}")

    def sending(self, backend: Backend, system: str) -> None:
        """Open the attempt's CLIENT span immediately before its payload may leave, and hand its W3C context to
        the transport of this send (`core.trace_context`)."""
        trace = self._tracing._trace
        parent = trace.set_span_in_context(self.span)
        span = self._tracing.tracer.start_span(
            f"{self._op} {backend.model}", context=parent, kind=trace.SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": self._op, "gen_ai.system": system,
                        "gen_ai.provider.name": system, "gen_ai.request.model": backend.model,
                        "sovra.target": backend.target, "sovra.zone": backend.zone,
                        "sovra.country": backend.place.country or "", "sovra.tier": backend.tier,
                        "sovra.deployment": backend.deployment})
        self._attempts.append(span)
        carrier: dict[str, str] = {}
        self._tracing._propagator.inject(carrier, context=trace.set_span_in_context(span))
        OUTGOING.set(carrier)

    def ended(self, outcome: str) -> None:
        """The latest attempt ended; one that answered stays open until the answer's usage is known."""
        if not self._attempts:
            return
        span = self._attempts.pop()
        span.set_attribute("sovra.outcome", outcome)
        if outcome in ("ok", "stream_interrupted"):
            if self._served is not None:
                self._served.end()
            self._served = span
            return
        _failed(span, self._tracing._trace, outcome)
        span.end()

    def finish(self, *, status: int, outcome: str, usage: tuple[int, int], response_model: str | None,
               served: Backend | None, cost_usd: float | None) -> None:
        """End every span: the answer's usage on the attempt that answered and on the request."""
        trace = self._tracing._trace
        usage_attrs = {"gen_ai.usage.input_tokens": usage[0], "gen_ai.usage.output_tokens": usage[1]}
        for span in self._attempts:  # still in flight when the request ended: the client went away
            span.set_attribute("sovra.outcome", "cancelled")
            span.end()
        self._attempts.clear()
        if self._served is not None:
            self._served.set_attributes(usage_attrs)
            if response_model:
                self._served.set_attribute("gen_ai.response.model", response_model)
            self._served.end()
            self._served = None
        span = self.span
        span.set_attributes(usage_attrs)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("sovra.outcome", outcome)
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        if served is not None:
            span.set_attributes({"sovra.target": served.target, "sovra.zone": served.zone,
                                 "sovra.country": served.place.country or ""})
        if cost_usd is not None:
            span.set_attribute("sovra.cost_usd", cost_usd)
        if status >= 400:
            _failed(span, trace, outcome, server=status >= 500)
        span.end()


def _failed(span: Any, trace: Any, outcome: str, *, server: bool = True) -> None:
    span.set_attribute("error.type", outcome)
    if server:
        span.set_status(trace.Status(trace.StatusCode.ERROR))
