"""openai clients owned by a test server: one per settings, all closed when the server stops.

A client dropped without close() leaves keep-alive sockets for the garbage collector; the
ResourceWarning that follows is an error in this test run (filterwarnings = error).
"""

from __future__ import annotations

from typing import Any

import openai


class ClientCache:
    """Sync openai clients for one base URL, reused per settings and closed together."""

    def __init__(self) -> None:
        self._clients: dict[str, openai.OpenAI] = {}

    def get(self, base_url: str, **kwargs: Any) -> openai.OpenAI:
        """The client for these settings, made on first use."""
        key = repr(sorted(kwargs.items()))
        client = self._clients.get(key)
        if client is None or client.is_closed():  # a test may close what it was given
            client = self._clients[key] = openai.OpenAI(base_url=base_url, **kwargs)
        return client

    def close(self) -> None:
        """Close every client handed out."""
        for client in self._clients.values():
            if not client.is_closed():
                client.close()
        self._clients.clear()
