"""The ``@connections`` client the app's wiring builds, for the baseline's handlers (same client, serial pushes)."""

from __future__ import annotations

from chalicelib.config import get_settings
from chalicelib.connections_http import SignedConnectionsClient
from chalicelib.push import ConnectionsClient


def connections_client(endpoint_url: str) -> ConnectionsClient:
    settings = get_settings()
    return SignedConnectionsClient(
        endpoint_url,
        region=settings.aws_region,
        concurrency=settings.push_concurrency,
        timeout_s=settings.push_timeout_s,
    )
