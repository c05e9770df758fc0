"""Where Sovra keeps local state; a module of its own so that light commands (`sovra plan`) need nothing heavier."""

from __future__ import annotations

import os
from pathlib import Path


def sovra_home() -> Path:
    """Where Sovra keeps local state (the local Ray's record, the audit trail, live settings): $SOVRA_HOME or
    ~/.sovra."""
    return Path(os.environ.get("SOVRA_HOME") or Path.home() / ".sovra")
