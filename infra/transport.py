"""What Sovra's own clients (the CLI, `up`, `status`, `sovra audit`, the SDK) may send where, and whom they trust.

*Loopback* is decided from the address as written, never by resolving it: an IP literal in 127.0.0.0/8 or `::1`,
or the name `localhost`. Any other name is remote, even one that resolves to 127.0.0.1 today (DNS or /etc/hosts
can change under Sovra; the literal cannot). A secret (a Ray token) goes over plain http only to loopback.

*Trust* for https: the system's CA bundle as the standard variables name it (`SSL_CERT_FILE`, `SSL_CERT_DIR`, and
`REQUESTS_CA_BUNDLE`, which a company CA is often given in), all of those set; Mozilla's bundle (certifi) when none.
"""

from __future__ import annotations

import ipaddress
import os
import ssl

#: Set to 1 to let Sovra's CLI send a key (an admin key) over plain http to a router that is not on this machine:
#: a network the user trusts. Without it the CLI refuses, as the SDK does without `insecure_http=True`.
PLAIN_HTTP_ENV = "SOVRA_ALLOW_PLAIN_HTTP"

#: The variables naming CA files a company's CA is given in (a file), and the one naming a directory.
CA_FILE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
CA_DIR_VARIABLE = "SSL_CERT_DIR"


def is_loopback(host: str | None) -> bool:
    """True for an IP literal in 127.0.0.0/8 or ::1 (brackets allowed), or `localhost`; any other name is remote."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_may_travel(url: str) -> bool:
    """May a key go to `url`: over https, to loopback, or over plain http where the user said the network is
    trusted ($SOVRA_ALLOW_PLAIN_HTTP=1)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or is_loopback(parts.hostname) or os.environ.get(PLAIN_HTTP_ENV) == "1"


def client_trust() -> ssl.SSLContext:
    """The TLS context Sovra's clients verify servers with: every CA file or directory the standard variables
    name, else certifi's bundle. Hostnames are checked (the default)."""
    files = [os.environ[v] for v in CA_FILE_VARIABLES if os.environ.get(v)]
    directory = os.environ.get(CA_DIR_VARIABLE) or None
    if not files and not directory:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    ctx = ssl.create_default_context(cafile=files[0] if files else None, capath=directory)
    for extra in dict.fromkeys(files[1:]):  # each file once, in order
        if extra != files[0]:
            ctx.load_verify_locations(cafile=extra)
    return ctx


class TokenInClearError(ValueError):
    """A secret would be sent over plain http to a host that is not loopback."""


def refuse_token_in_clear(url: str, *, what: str, fix: str) -> None:
    """Raise `TokenInClearError` when `url` is plain http to a host that is not loopback: a token sent there can
    be read (and replayed) by anyone on the network path. `what` names the secret, `fix` says what to do."""
    import httpx

    parsed = httpx.URL(url)
    if parsed.scheme == "https" or is_loopback(parsed.host):
        return
    raise TokenInClearError(f"{what} would go in clear over {parsed.scheme}:// to {parsed.host}, which is not "
                            f"loopback (127.0.0.0/8, ::1 or localhost); Sovra refuses to send it. {fix}")
