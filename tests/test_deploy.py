"""The deployment kit in deploy/: every file parses, every metric the alerts and the dashboard
name is served by the real app's /metrics, every BRIDGE_* variable it sets exists, and the
manifests keep their promises (non-root, probes, grace, the migration step)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.config import SECRET_SETTINGS, Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
#: Series Prometheus itself makes (not the bridge).
PROMETHEUS_OWN = {"up"}
GRACE = Settings.model_fields["shutdown_grace_seconds"].default


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kubernetes(kind: str) -> list[dict[str, Any]]:
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in load_all(p)]
    return [d for d in docs if d.get("kind") == kind]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def expressions() -> list[str]:
    """Every PromQL expression of the alert rules and the dashboard."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The series an expression selects: identifiers not followed by '(' (functions), not
    label names inside {} or by()/without(), not keywords."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groups = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels
    )
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groups)
    names = set()
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", without_ranges):
        word = match[1]
        if word in {"and", "or", "unless", "offset", "bool", "le", "inf", "nan"}:
            continue
        if re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        names.add(word)
    return names


def test_every_file_parses() -> None:
    files = yaml_files()
    assert len(files) >= 10
    for path in files:
        assert load_all(path), path
    json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())


async def test_every_metric_named_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.text))
    served = {f.name for f in families} | {s.name for f in families for s in f.samples}
    suffixes = ("_total", "_bucket", "_sum", "_count", "_created")
    named: set[str] = set()
    for expr in expressions():
        named |= metric_names(expr)
    assert {"ctmm_bridge_upstream_paused", "ctmm_bridge_ready"} <= named  # the parser works
    for name in sorted(named - PROMETHEUS_OWN):
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        assert name in served or base in served, f"{name} is not in /metrics"


def test_the_alerts_cover_what_an_operator_must_know() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    wanted = {
        "CtmmBridgeUpstreamPaused": "ctmm_bridge_upstream_paused",
        "CtmmBridgeDeliveryLag": "ctmm_bridge_outbox_oldest_pending_age_seconds",
        "CtmmBridgeDeadDeliveries": 'ctmm_bridge_deliveries_total{outcome="dead"}',
        "CtmmBridgeWorkerHeartbeatMissing": "ctmm_bridge_worker_heartbeat_age_seconds",
        "CtmmBridgeIngest5xx": 'ctmm_bridge_inbound_requests_total{status=~"5.."}',
        "CtmmBridgeNotReady": "ctmm_bridge_ready",
    }
    for alert, series in wanted.items():
        assert series in by_name[alert]["expr"], alert
        assert by_name[alert]["labels"]["severity"] in ("warning", "critical")
        assert by_name[alert]["annotations"]["summary"]


def test_promtool_accepts_the_rules_and_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    for args in (
        ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        ["check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
    ):
        result = subprocess.run(  # noqa: S603 - a fixed tool on our own files
            [promtool, *args], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _bridge_variables(text: str) -> set[str]:
    return set(re.findall(r"\bBRIDGE_[A-Z0-9_]+\b", text))


def test_every_bridge_variable_in_the_kit_exists() -> None:
    """A misspelt variable would be ignored silently (extra="ignore"): none is."""
    known = {env_name(name) for name in Settings.model_fields}
    known |= {env_name(name) + "_FILE" for name in SECRET_SETTINGS}
    # Compose's own interpolation variables, not settings of the bridge.
    compose_only = {"BRIDGE_DOMAIN", "BRIDGE_UPSTREAMS"}
    for path in [*yaml_files(), DEPLOY / "systemd" / "ctmm-bridge.service"]:
        for variable in _bridge_variables(path.read_text()) - compose_only:
            assert variable in known, f"{path.relative_to(ROOT)}: {variable} is no setting"


def _grace(container_env: dict[str, str]) -> float:
    return float(container_env.get("BRIDGE_SHUTDOWN_GRACE_SECONDS", GRACE))


def test_kubernetes_deployments() -> None:
    [config] = kubernetes("ConfigMap")
    settings_env: dict[str, str] = config["data"]
    deployments = {d["metadata"]["name"]: d for d in kubernetes("Deployment")}
    assert set(deployments) == {"ctmm-bridge-api", "ctmm-bridge-worker"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert deployment["spec"]["replicas"] >= 2
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        # Kubernetes waits this long after SIGTERM; the bridge needs its grace plus margin.
        assert pod["terminationGracePeriodSeconds"] >= _grace(settings_env) + 10, name
        [container] = pod["containers"]
        assert not container["image"].endswith(":latest")
        assert ":" in container["image"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    api = deployments["ctmm-bridge-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["command"] == ["ctmm-bridge", "serve"]
    assert {"name": "BRIDGE_EMBEDDED_WORKER", "value": "false"} in api["env"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"  # see api.yaml: not /readyz
    worker = deployments["ctmm-bridge-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"] == ["ctmm-bridge", "worker"]
    [job] = kubernetes("Job")
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["ctmm-bridge", "db", "upgrade"]
    # The public side routes only the webhooks.
    [ingress] = kubernetes("Ingress")
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/clevertap/", "/mailmodo/"}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/enable-access-log"] == (
        "false"
    )


def test_compose_kit() -> None:
    services = compose()["services"]
    assert {"postgres", "migrate", "api-1", "api-2", "worker-1", "worker-2"} <= set(services)
    assert services["migrate"]["command"] == ["ctmm-bridge", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api-1", "api-2", "worker-1", "worker-2"):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert float(service["stop_grace_period"].removesuffix("s")) >= GRACE + 10
        environment = service["environment"]
        for secret in SECRET_SETTINGS:  # secrets come as files, not in the environment
            assert env_name(secret) not in environment
            assert env_name(secret) + "_FILE" in environment
    for name in ("api-1", "api-2"):
        assert services[name]["command"] == ["ctmm-bridge", "serve"]
        assert services[name]["environment"]["BRIDGE_EMBEDDED_WORKER"] == "false"
    for name in ("worker-1", "worker-2"):
        assert services[name]["command"] == ["ctmm-bridge", "worker"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for service in services.values():
        image = service.get("image", "")
        assert ":" in image
        assert not image.endswith(":latest")


def test_proxy_examples_keep_operator_routes_private() -> None:
    caddy = (DEPLOY / "caddy" / "Caddyfile").read_text()
    assert "path /clevertap/* /mailmodo/*" in caddy
    assert "respond 404" in caddy
    assert not re.search(r"^\s*log\b", caddy, re.MULTILINE)  # no access log
    nginx = (DEPLOY / "nginx" / "ctmm-bridge.conf").read_text()
    mailmodo = nginx.split("location /mailmodo/", 1)[1].split("}", 1)[0]
    assert "access_log off;" in mailmodo
    assert "location / {\n        return 404;" in nginx
