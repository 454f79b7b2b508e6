"""The deployment template: `chalice package` offline, then cfn-lint with no errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", params=["dev", "prod"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp(f"package-{request.param}")
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    # Package with the stage's environment, not the test session's.
    for name in ("DATABASE_URL", "REDIS_URL", "COGNITO_USER_POOL_ARN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name, None)
    subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", request.param,
         "--merge-template", ".chalice/merge-template.json", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out, json.loads((out / "sam.json").read_text())


def test_cfn_lint_reports_no_errors(template: tuple[Path, dict[str, Any]]) -> None:
    out, _ = template
    result = subprocess.run(
        [str(BIN / "cfn-lint"), "--format", "parseable", str(out / "sam.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational; 1 a crash.
    assert result.returncode & 3 == 0, result.stdout + result.stderr


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }


def test_every_function_runs_in_the_vpc_below_api_gateways_timeout(template: tuple[Path, dict[str, Any]]) -> None:
    _, sam = template
    lambdas = functions(sam)
    assert set(lambdas) == {"APIHandler", "WebsocketConnect", "WebsocketMessage", "WebsocketDisconnect"}
    for name, props in lambdas.items():
        assert props["Timeout"] < 29, name
        assert props["VpcConfig"]["SubnetIds"] and props["VpcConfig"]["SecurityGroupIds"], name
        variables = props["Environment"]["Variables"]
        assert "COGNITO_APP_CLIENT_ID" in variables and "REDIS_URL" in variables
        assert not any("PASSWORD" in key or "SECRET" in key for key in variables), name


def test_policy_is_least_privilege(template: tuple[Path, dict[str, Any]]) -> None:
    _, sam = template
    for name, resource in sam["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        statements = [s for p in resource["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
        actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
        assert "execute-api:ManageConnections" in actions and "rds-db:connect" in actions, name
        assert not any(a.endswith(":*") or a == "*" for a in actions), name
        push = next(s for s in statements if s["Action"] == "execute-api:ManageConnections")
        assert push["Resource"].endswith("/@connections/*")


def test_websocket_routes_are_wired(template: tuple[Path, dict[str, Any]]) -> None:
    _, sam = template
    routes = {r["Properties"]["RouteKey"] for r in sam["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Route"}
    assert routes == {"$connect", "$default", "$disconnect"}


def test_gateway_errors_keep_the_error_shape_and_cors(template: tuple[Path, dict[str, Any]]) -> None:
    """API Gateway's own 401 (Cognito authorizer) answers {"Code", "Message"} with CORS headers too."""
    _, sam = template
    responses = sam["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]
    for kind in ("DEFAULT_4XX", "DEFAULT_5XX"):
        assert "gatewayresponse.header.Access-Control-Allow-Origin" in responses[kind]["responseParameters"]
        assert '"Code"' in responses[kind]["responseTemplates"]["application/json"]
