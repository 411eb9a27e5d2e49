"""Where klingflow keeps its state on this machine.

One directory (``KLINGFLOW_HOME``, default ``~/.klingflow``) holds the media store, the journal,
the ledger and the emulator's key and TLS files, so the cache is shared by every pipeline run by
this user and survives restarts.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["klingflow_home"]


def klingflow_home() -> Path:
    """Return the klingflow home directory, creating it if needed."""
    home = Path(os.environ.get("KLINGFLOW_HOME") or Path.home() / ".klingflow").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
