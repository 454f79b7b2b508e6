"""The deployment template: `chalice package` offline, then cfn-lint with no errors."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from local.identity import LocalIdentityProvider

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TEST"
BIN = Path(sys.executable).parent
# `chalice package` and cfn-lint, twice: a minute of the suite; no server, but not for make test-unit.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["dev", "prod"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp(f"package-{request.param}")
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    # Package with the stage's environment, not the test session's.
    for name in ("DATABASE_URL", "REDIS_URL", "COGNITO_USER_POOL_ARN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name, None)
    subprocess.run(
        [
            str(BIN / "chalice"),
            "package",
            "--stage",
            request.param,
            "--merge-template",
            ".chalice/merge-template.json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    # As `make package` does: bytecode into the zip (tools/precompile_package.py).
    subprocess.run([sys.executable, "tools/precompile_package.py", str(out)], cwd=ROOT, check=True, capture_output=True)
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
    assert set(lambdas) == {
        "APIHandler",
        "WebsocketConnect",
        "WebsocketMessage",
        "WebsocketDisconnect",
        "FanoutWorker",
        "PresenceSweep",
    }
    for name, props in lambdas.items():
        if name not in {"FanoutWorker", "PresenceSweep"}:  # the queue's worker and the schedule answer no request
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


QUEUE_ARN = {"Fn::GetAtt": ["FanoutQueue", "Arn"]}
SENDERS = {"WebsocketMessageRole", "ApiHandlerRole"}
CONSUMER_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"}


def sqs_grants(template: dict[str, Any]) -> dict[str, set[str]]:
    """role -> the SQS actions granted to it (on the fan-out queue only: anything else fails the test)."""
    grants: dict[str, set[str]] = {}
    for resource in template["Resources"].values():
        properties = resource["Properties"]
        if resource["Type"] == "AWS::IAM::Policy":
            roles, documents = [r["Ref"] for r in properties["Roles"]], [properties["PolicyDocument"]]
        elif resource["Type"] == "AWS::IAM::Role":
            roles, documents = [], [p["PolicyDocument"] for p in properties.get("Policies", [])]
        else:
            continue
        for statement in (s for d in documents for s in d["Statement"]):
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            sqs = {a for a in actions if a.startswith("sqs:")}
            if not sqs:
                continue
            assert roles, "SQS rights belong on the queue's ARN, granted per role (merge-template.json)"
            assert statement["Resource"] == QUEUE_ARN and statement["Effect"] == "Allow", statement
            for role in roles:
                grants.setdefault(role, set()).update(sqs)
    return grants


def test_only_the_senders_may_enqueue_and_only_the_worker_may_consume(template: tuple[Path, dict[str, Any]]) -> None:
    _, sam = template
    grants = sqs_grants(sam)
    assert grants == {**{role: {"sqs:SendMessage"} for role in SENDERS}, "FanoutWorkerRole": CONSUMER_ACTIONS}
    assert sam["Resources"]["FanoutWorker"]["Properties"]["Role"] == {"Fn::GetAtt": ["FanoutWorkerRole", "Arn"]}
    # The event source mapping is created only once its role may read the queue.
    assert "FanoutConsumePolicy" in sam["Resources"]["FanoutWorker"]["DependsOn"]


def test_the_fanout_queue_has_a_dead_letter_queue_and_a_partial_batch_worker(
    template: tuple[Path, dict[str, Any]],
) -> None:
    _, sam = template
    resources = sam["Resources"]
    queue = resources["FanoutQueue"]["Properties"]
    assert resources["FanoutDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "FanoutMaxReceiveCount"},
    }
    assert sam["Parameters"]["FanoutMaxReceiveCount"]["Default"] >= 2
    worker = resources["FanoutWorker"]["Properties"]
    # AWS's rule: a visibility timeout of at least six times the function's timeout.
    assert queue["VisibilityTimeout"] >= 6 * worker["Timeout"]
    # Shards live no longer than the worker pushes them (FANOUT_MAX_AGE_SECONDS, 3600 by default).
    assert queue["MessageRetentionPeriod"] <= 3600
    [event] = worker["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::Sub": "${FanoutQueue.Arn}"}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 < event["Properties"]["BatchSize"] <= 10
    for name in ("WebsocketMessage", "APIHandler", "FanoutWorker"):
        assert resources[name]["Properties"]["Environment"]["Variables"]["FANOUT_QUEUE_URL"] == {"Ref": "FanoutQueue"}


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


def test_every_module_ships_checked_hash_bytecode_of_its_own_source(template: tuple[Path, dict[str, Any]]) -> None:
    out, _ = template
    with zipfile.ZipFile(out / "deployment.zip") as package:
        names = set(package.namelist())
        sources = [name for name in names if name.endswith(".py")]
        assert "app.py" in sources and "chalicelib/wire.py" in sources
        for source in sources:
            folder, _, module = source.rpartition("/")
            cached = f"{folder}/__pycache__/{module[:-3]}.{sys.implementation.cache_tag}.pyc".lstrip("/")
            assert cached in names, source
            header = package.read(cached)[:16]
            assert header[:4] == importlib.util.MAGIC_NUMBER, source
            assert int.from_bytes(header[4:8], "little") == 0b11, source  # hash-based and checked
            assert header[8:16] == importlib.util.source_hash(package.read(source)), source


# Counts the modules Python compiles from source (SourceLoader.source_to_code runs only when no valid bytecode
# is found), then imports what a REST and a WebSocket handler build on first use.
_IMPORT_PROBE = """
import importlib._bootstrap_external as loading, json, os, sys
compiled = []
original = loading.SourceLoader.source_to_code
def counting(self, data, path, **kwargs):
    compiled.append(path)
    return original(self, data, path, **kwargs)
loading.SourceLoader.source_to_code = counting
sys.path.insert(0, os.getcwd())
import app
from chalicelib import wiring
wiring.get_service()
wiring.get_registry()
wiring.get_verifier()
wiring.get_fanout_worker()
wiring.get_pusher(wiring.connections_endpoint("abc.execute-api.us-east-1.amazonaws.com", "prod"))
package = os.getcwd() + os.sep
print(json.dumps([path for path in compiled if path.startswith(package)]))
"""


def test_the_package_imports_from_a_read_only_folder_without_compiling(
    template: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """What Lambda does: unpack into a folder Python cannot write to, then import the handler."""
    out, _ = template
    task = tmp_path / "task"
    with zipfile.ZipFile(out / "deployment.zip") as package:
        package.extractall(task)
    for path in [task, *task.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "COGNITO_USER_POOL_ID": "us-east-1_TEST",
        "COGNITO_APP_CLIENT_ID": "test",
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "JWKS_JSON": json.dumps(LocalIdentityProvider(ISSUER, "test").jwks()),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _IMPORT_PROBE],
            cwd=task,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for path in [task, *task.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_presence_sweep_runs_every_minute_and_knows_where_to_push(template: tuple[Path, dict[str, Any]]) -> None:
    _, sam = template
    sweep = functions(sam)["PresenceSweep"]
    (event,) = sweep["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == "rate(1 minute)"
    endpoint = sweep["Environment"]["Variables"]["CONNECTIONS_ENDPOINT_URL"]["Fn::Sub"]
    assert "${WebsocketAPI}" in endpoint and endpoint.endswith("/${WebsocketAPIStage}")


def test_rest_knows_where_to_push_and_may(template: tuple[Path, dict[str, Any]]) -> None:
    """REST changes push too (conversation-created, participants-updated): the REST function gets the
    WebSocket API's @connections endpoint, and its role may post there."""
    _, sam = template
    rest = functions(sam)["APIHandler"]
    endpoint = rest["Environment"]["Variables"]["CONNECTIONS_ENDPOINT_URL"]["Fn::Sub"]
    assert "${WebsocketAPI}" in endpoint and endpoint.endswith("/${WebsocketAPIStage}")
    role = rest["Role"]["Fn::GetAtt"][0]
    statements = sam["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert any(statement["Action"] == "execute-api:ManageConnections" for statement in statements)
