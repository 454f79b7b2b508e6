"""The lean @connections client signs exactly as botocore signs, and speaks the contract of push.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chalicelib.push import GoneError, PushFailed, SignedConnectionsClient
from local.connections_api import ConnectionsServer
from local.recording_sink import Behaviour, RecordingSink

ENDPOINT = "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
MOMENT = datetime(2026, 11, 28, 10, 33, 11, tzinfo=UTC)


def botocore_headers(credentials: Credentials, method: str, path: str, body: bytes) -> dict[str, str]:
    """What botocore's SigV4Auth.add_auth produces, at a fixed time."""
    request = AWSRequest(method=method, url=ENDPOINT.rsplit("/", 1)[0] + path, data=body)
    auth = SigV4Auth(credentials, "execute-api", "us-east-1")
    request.context["timestamp"] = MOMENT.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    auth._inject_signature_to_request(request, signature)
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize(
    ("method", "connection_path", "body"),
    [("POST", "/prod/@connections/abc%3D", b'{"type":"new-message"}'), ("DELETE", "/prod/@connections/x~y", b"")],
)
def test_signature_matches_botocore(token: str | None, method: str, connection_path: str, body: bytes) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    client = SignedConnectionsClient(ENDPOINT, region="us-east-1", concurrency=1, timeout_s=1, credentials=credentials)
    ours = client.signed_headers(method, connection_path, body, MOMENT)
    expected = botocore_headers(credentials, method, connection_path, body)
    assert ours["authorization"] == expected["authorization"]
    assert ours["x-amz-date"] == expected["x-amz-date"]
    assert ours.get("x-amz-security-token") == expected.get("x-amz-security-token")


@pytest.fixture
def server() -> tuple[ConnectionsServer, RecordingSink]:
    sink = RecordingSink()
    with ConnectionsServer(sink) as running:
        yield running, sink  # type: ignore[misc]


def client_for(url: str) -> SignedConnectionsClient:
    return SignedConnectionsClient(
        url + "/stage",
        region="us-east-1",
        concurrency=2,
        timeout_s=2,
        credentials=Credentials("local", "local"),
    )


def test_posts_deletes_and_gone(server: tuple[ConnectionsServer, RecordingSink]) -> None:
    running, sink = server
    client = client_for(running.url)
    sink.open("conn-1=")
    client.post("conn-1=", b'{"n":1}')
    client.post("conn-1=", b'{"n":2}')  # the same keep-alive socket again
    assert sink.json_frames("conn-1=") == [{"n": 1}, {"n": 2}]
    client.close("conn-1=")
    assert sink.deleted == ["conn-1="]
    with pytest.raises(GoneError):
        client.post("conn-1=", b"{}")


@pytest.mark.parametrize(("status", "times", "delivered"), [(429, 2, True), (500, 2, True), (503, None, False)])
def test_throttling_and_faults_are_retried_three_times(
    server: tuple[ConnectionsServer, RecordingSink], status: int, times: int | None, delivered: bool
) -> None:
    running, sink = server
    client = client_for(running.url)
    sink.open("conn-2=")
    sink.inject(Behaviour(status=status, times=times), "conn-2=")
    if delivered:
        client.post("conn-2=", b"{}")
    else:
        with pytest.raises(PushFailed):
            client.post("conn-2=", b"{}")
    assert sink.attempts("conn-2=") == 3
    assert len(sink.frames("conn-2=")) == (1 if delivered else 0)


def test_a_client_error_is_not_retried(server: tuple[ConnectionsServer, RecordingSink]) -> None:
    running, sink = server
    client = client_for(running.url)
    sink.open("conn-3=")
    sink.inject(Behaviour(status=400), "conn-3=")
    with pytest.raises(PushFailed):
        client.post("conn-3=", b"{}")
    assert sink.attempts("conn-3=") == 1
