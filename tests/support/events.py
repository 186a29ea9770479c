"""Read a stopped gateway's spool as a consumer would: events with their content opened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feedback.privacy import open_event
from feedback.privacy.file_store import FileKeyStore
from feedback.privacy.keys import KeyCache
from feedback.sinks.spool import SEGMENT_SUFFIX


def spooled_events(spool: Path) -> list[dict[str, Any]]:
    """Every spooled event in order, sealed content opened with the gateway's keys (the
    file store beside the spool, the default; docs/privacy.md)."""
    lines: list[bytes] = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        lines.extend(line for line in path.read_bytes().splitlines() if line.strip())
    keys = FileKeyStore(spool.parent / "keys", KeyCache(1000, 60))
    return [open_event(json.loads(line), keys) for line in lines]
