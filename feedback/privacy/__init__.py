"""Erasure by crypto-shredding: event content sealed per unit, a unit forgotten by deleting its key.

Readers call `open_event(event, keys)` with a KeyReader (`key_reader(config, spool_dir)`).
"""

from feedback.privacy.keys import KeyReader, KeyRing, KeyStoreError, UnitKey
from feedback.privacy.seal import ERASED, SealError, is_sealed, open_event

__all__ = [
    "ERASED",
    "KeyReader",
    "KeyRing",
    "KeyStoreError",
    "SealError",
    "UnitKey",
    "is_sealed",
    "open_event",
]
