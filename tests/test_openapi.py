"""docs/openapi.yaml describes the REST API the app really serves.

Two checks: the document's operations are exactly the app's routes (so neither can drift), and schemathesis
generates requests from the document against the local server and validates every answer (no 5xx, a documented
status, JSON, the documented schema).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import given, settings
from schemathesis import checks
from schemathesis.core.result import Ok

from tests.conftest import new_user
from tests.local_server import LocalServer, session_server

DOC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    return loaded


def test_the_document_lists_exactly_the_apps_routes() -> None:
    import app as chat_app

    doc = document()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = {
        (path, method)
        for path, entries in chat_app.app.routes.items()
        for method in entries
        if method != "OPTIONS"  # the open CORS preflights, one per path
    }
    assert documented == served
    for path in doc["paths"]:
        assert "OPTIONS" in chat_app.app.routes[path], f"{path} has no CORS preflight"
    # operationId is the view function's name, as the contract's table calls it.
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert chat_app.app.routes[path][method.upper()].view_name == operation["operationId"]


def test_every_operation_documents_its_errors_as_json_objects() -> None:
    doc = document()
    for item in doc["paths"].values():
        for operation in item.values():
            assert {"400", "401"} <= set(operation["responses"])
            if "{conversationId}" in str(operation.get("parameters")):
                assert "404" in operation["responses"]
    assert doc["components"]["schemas"]["Error"]["required"] == ["Code", "Message"]


@pytest.fixture(scope="module")
def server(app_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with session_server(tmp_path_factory.mktemp("openapi-server")) as running:
        yield running


@pytest.fixture(scope="module")
def caller_token(server: LocalServer) -> str:
    """A caller who is in a conversation, so generated ids sometimes hit real rows."""
    alice = new_user("alice")
    token = server.token(alice)
    server.direct(token, new_user("bob"))
    return token


SCHEMA = schemathesis.openapi.from_path(DOC)
OPERATIONS = {
    operation.label: operation
    for operation in (
        result.ok() if isinstance(result, Ok) else pytest.fail(f"docs/openapi.yaml: {result.err()}")
        for result in SCHEMA.get_all_operations()
    )
}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_the_local_server_conforms_to_the_document(server: LocalServer, caller_token: str, label: str) -> None:
    """schemathesis: requests generated from the document, every answer checked against it."""

    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25")), deadline=None, database=None)
    def conforms(case: Any) -> None:
        case.call_and_validate(base_url=server.rest_url, headers={"Authorization": caller_token}, checks=CHECKS)

    conforms()
