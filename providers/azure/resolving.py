"""What Azure's two inference clients share: the endpoint's URL and credential are read from ARM before the first
send (once, however many requests arrive together), read again once when the endpoint refuses them (a 401: a
rotated key or an expired token, and nothing was processed), and health is ARM's word, never a payload."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from sovra.core.api_errors import AttemptFailed, Refused
from sovra.core.backends import Backend
from sovra.providers.clients import HttpClient

T = TypeVar("T")
R = TypeVar("R")  # what one endpoint resolves to (its URL and credential)


class ResolvingClient(HttpClient, Generic[R], abc.ABC):
    """An HttpClient for endpoints found through ARM; subclasses say how to name (`_key`), resolve (`_resolve_now`)
    and describe (`_facts`, whose `ready` says it can serve) one, and which credentials to forget on a 401."""

    def __init__(self, client: Any = None):
        super().__init__(client)
        self._resolved: dict[Hashable, R] = {}
        self._resolving: dict[Hashable, asyncio.Lock] = {}

    @abc.abstractmethod
    def _key(self, backend: Backend) -> Hashable: ...

    @abc.abstractmethod
    async def _resolve_now(self, backend: Backend) -> R:
        """Read the endpoint's URL and credential from ARM (a verdict when it cannot be used)."""

    @abc.abstractmethod
    async def _facts(self, backend: Backend) -> Any:
        """The endpoint's state as ARM reports it; its `ready` says whether it can serve."""

    def _forget_tokens(self) -> None:
        """Drop cached Entra ID tokens (after a 401); nothing by default."""

    async def _ready(self, backend: Backend) -> R:
        key = self._key(backend)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        async with self._resolving.setdefault(key, asyncio.Lock()):  # concurrent first calls read ARM once
            hit = self._resolved.get(key)
            if hit is None:
                hit = self._resolved[key] = await self._resolve_now(backend)
        return hit

    # -- operations: resolve first, re-read once if the credentials were refused ---------------------------------

    async def chat(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(backend, lambda: super(ResolvingClient, self).chat(backend, body))

    async def embed(self, backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(backend, lambda: super(ResolvingClient, self).embed(backend, body))

    async def chat_stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return await self._call(backend, lambda: super(ResolvingClient, self).chat_stream(backend, body))

    async def _call(self, backend: Backend, send: Callable[[], Awaitable[T]]) -> T:
        await self._ready(backend)
        try:
            return await send()
        except Refused as exc:
            if exc.status != 401:
                raise
        # A rotated key or an expired token: nothing was processed, so read them again and resend, once.
        self._resolved.pop(self._key(backend), None)
        self._forget_tokens()
        await self._ready(backend)
        return await send()

    # -- payload-free: ARM only ----------------------------------------------------------------------------------

    async def health(self, backend: Backend) -> bool:
        """Provisioned and able to serve, as ARM says; a failure to ask counts as not healthy."""
        try:
            facts = await self._facts(backend)
        except AttemptFailed:
            self._resolved.pop(self._key(backend), None)
            return False
        if not facts.ready:
            self._resolved.pop(self._key(backend), None)  # re-read the URL and key once it is back
        return facts.ready
