"""The production compose file and the Kubernetes manifests, validated offline (no Docker engine runs here).

No compose JSON schema or ``docker compose`` plugin is available offline in this project, so the
checks are structural and cross-file: the image matches the embedded Triton, ports match
``fashionbox/contract.py``, probes hit Triton's health paths, grace periods outlast the drain and
Triton's exit timeout, and the servers' commands go through ``fashionbox serve``'s own parser and
``build_command``, so the Triton flags checked are the ones the image would run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fashionbox.core.cross_site import SitePolicy, allowed_hosts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_triton_image_matches_the_embedded_triton_release(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / compose["services"]["triton"]["build"]["dockerfile"]).read_text()
    # NGC 24.10 ships Triton 2.51, the release inside the nvidia-pytriton 0.7.0 wheel.
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.MULTILINE)


def test_model_repository_is_mounted_read_only(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["triton"]["volumes"]
    assert "./artifacts/model_repository:/models:ro" in volumes


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    ports = compose["services"]["triton"]["ports"]
    assert sorted(ports) == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]


def test_server_reserves_a_gpu_checks_readiness_and_drains_on_stop(compose: dict[str, Any]) -> None:
    service = compose["services"]["triton"]
    device = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    config = _serve_config(service["command"])
    # Healthy means the supervisor's verdict (every model ready, no stub dead), not Triton's own ready.
    assert config.ready_file is not None
    assert service["healthcheck"]["test"] == ["CMD", "test", "-f", str(config.ready_file)]
    assert config.drain_on_stop and config.model_control_mode == "none" and config.host == "0.0.0.0"
    # Every model loaded, nothing loadable from outside, the ensemble unloadable by the wrapper alone.
    triton = _triton_command(config, launcher_key="wrapper-only-launcher-key")
    assert _flag(triton, "--model-control-mode") == "explicit" and _flag(triton, "--load-model") == "*"
    assert _flag(triton, "--http-restricted-api").startswith("model-repository,shared-memory,trace,logging:")
    # HTTP is plaintext: it binds apart from gRPC; here on every interface, published on the host's loopback.
    assert _flag(triton, "--http-address") == "0.0.0.0" and config.http
    assert _flag(triton, "--exit-timeout-secs") == str(config.exit_timeout_s) == "30"
    assert _flag(triton, "--backend-config") == "python,shm-default-byte-size=16777216"
    grace_s = int(str(service["stop_grace_period"]).rstrip("s"))
    assert grace_s > _stop_budget_s(config), "docker would SIGKILL before the server drained and exited"


def test_the_image_runs_its_own_triton_through_fashionbox_serve() -> None:
    from fashionbox.server import TRITON_HOME_ENV

    dockerfile = (ROOT / "deploy/triton.Dockerfile").read_text()
    assert re.search(rf"^ENV {TRITON_HOME_ENV}=/opt/tritonserver$", dockerfile, re.MULTILINE)


def test_every_part_of_the_workspace_is_copied_into_the_image_and_installed(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / compose["services"]["triton"]["build"]["dockerfile"]).read_text()
    parts = {path.parent.name for path in ROOT.glob("*/pyproject.toml")}
    copied = set(re.findall(r"^COPY (\S+) /opt/fashionbox/", dockerfile, re.MULTILINE))
    installed = set(re.findall(r"\./(\w+)", dockerfile))
    assert len(parts) >= 10
    assert parts <= copied
    assert parts <= installed


# -- GPU deployment (issue 6) ---------------------------------------------------------------------------

K8S = ROOT / "deploy" / "k8s"
TRITON_RELEASE = "24.10"  # NGC tritonserver 24.10 = Triton 2.51 (the embedded one) = TensorRT 10.5


def _flag(command: list[str], name: str) -> str:
    return next(c for c in command if c.startswith(f"{name}=")).split("=", 1)[1]


ADMIN_KEY = "k8s-and-compose-test-admin-key"


def _serve_config(command: list[str], environ: dict[str, str] | None = None) -> Any:
    """The ``ServerConfig`` that ``fashionbox serve`` builds from a manifest's command (same parser)."""
    import argparse

    from fashionbox.server import add_serve_arguments, config_from_arguments

    assert command[:2] == ["fashionbox", "serve"]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return config_from_arguments(parser.parse_args(command[2:]), environ=environ or {})


def _triton_command(config: Any, launcher_key: str | None = None) -> list[str]:
    """The tritonserver command ``fashionbox serve`` runs for ``config`` in the image."""
    from fashionbox.server import build_command

    home = Path("/opt/tritonserver")
    return build_command(config, binary=home / "bin/tritonserver", backend_directory=home / "backends",
                         launcher_key=launcher_key)


def _stop_budget_s(config: Any) -> float:
    """The longest ``fashionbox serve`` takes to stop: the drain (at most the exit timeout), then Triton's exit."""
    from fashionbox.server import STOP_GRACE_S

    return 2 * config.exit_timeout_s + STOP_GRACE_S


def test_the_engine_builder_uses_the_tensorrt_release_of_the_serving_triton(compose: dict[str, Any]) -> None:
    builder = compose["services"]["engine-builder"]
    assert builder["image"] == f"nvcr.io/nvidia/tensorrt:{TRITON_RELEASE}-py3"
    device = builder["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "./artifacts/model_repository:/models" in builder["volumes"]  # writable: the plans go in
    assert "sh build_engines.sh" in " ".join(builder["command"])  # the converter's generated script
    assert builder["environment"]["FASHIONBOX_TIMING_CACHE"].startswith("/cache/")
    assert any(v.startswith("tensorrt-cache:/cache") for v in builder["volumes"])
    assert "tensorrt-cache" in compose["volumes"]


def test_triton_starts_after_the_engines_are_built_and_refuses_foreign_ones(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    assert triton["depends_on"] == {"engine-builder": {"condition": "service_completed_successfully"}}
    entrypoint = triton["entrypoint"]
    assert entrypoint[1:] == ["python3", "-m", "fashionbox.server.engines", "check", "/models", "--"]
    assert _serve_config(triton["command"]).repository == Path("/models")
    # The server part checks its engines by itself: the image needs no converter to start.
    import importlib.util

    assert importlib.util.find_spec(entrypoint[3]) is not None


def test_serve_without_flags_serves_what_convert_writes_by_default() -> None:
    import argparse

    from fashionbox.commands.cli import build_parser
    from fashionbox.server import DEFAULT_REPOSITORY, add_serve_arguments, config_from_arguments

    convert_out = build_parser().parse_args(["convert"]).out
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert config_from_arguments(parser.parse_args([]), environ={}).repository == convert_out == DEFAULT_REPOSITORY
    serve = build_parser().parse_args(["serve"])
    assert config_from_arguments(serve, environ={}).repository == convert_out
    # The variable still wins over the default, and a flag over both.
    assert config_from_arguments(serve, environ={"FASHIONBOX_REPOSITORY": "/m"}).repository == Path("/m")
    flagged = build_parser().parse_args(["serve", "--repository=/f"])
    assert config_from_arguments(flagged, environ={"FASHIONBOX_REPOSITORY": "/m"}).repository == Path("/f")


def test_the_secure_profile_passes_tritons_tls_flags_with_secrets_from_files(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    from fashionbox.contract import ADMIN_KEY_NAME
    from fashionbox.server.security import ADMIN_APIS

    secure = compose["services"]["triton-secure"]
    assert secure["profiles"] == ["secure"]
    # The secrets as compose mounts them, here under a temporary folder instead of /run/secrets/.
    for name in secure["secrets"]:
        (tmp_path / name).write_text(ADMIN_KEY if name == "admin_key" else f"-----BEGIN {name}-----\n")
        (tmp_path / name).chmod(0o600)  # a key file other users may read is refused
    config = _serve_config([word.replace("/run/secrets/", f"{tmp_path}/") for word in secure["command"]])
    assert config.secure and config.tls is not None and config.tls.mutual and config.admin_key == ADMIN_KEY
    command = _triton_command(config)
    assert _flag(command, "--grpc-use-ssl") == "true" and _flag(command, "--grpc-use-ssl-mutual") == "true"
    for flag, secret in (("--grpc-server-cert", "tls_cert"), ("--grpc-server-key", "tls_key"),
                         ("--grpc-root-cert", "tls_client_ca")):
        assert _flag(command, flag) == str(tmp_path / secret) and secret in secure["secrets"]
    restriction = f"{','.join(ADMIN_APIS)}:{ADMIN_KEY_NAME}={ADMIN_KEY}"
    assert _flag(command, "--grpc-restricted-protocol") == restriction
    # HTTP is plaintext, on the container's loopback only; inference over it needs the key too.
    assert _flag(command, "--http-restricted-api") == restriction.replace(":", ",inference:", 1)
    assert _flag(command, "--http-address") == "127.0.0.1" and _flag(command, "--grpc-address") == "0.0.0.0"
    assert config.exit_timeout_s == _serve_config(compose["services"]["triton"]["command"]).exit_timeout_s
    assert all(compose["secrets"][name]["file"].startswith("./secrets/") for name in secure["secrets"])
    assert "/secrets/" in (ROOT / ".gitignore").read_text().splitlines()  # no secret ever lands in git
    assert secure["volumes"] == ["./artifacts/model_repository:/models:ro"]


def test_the_loadtest_service_measures_the_triton_service(compose: dict[str, Any]) -> None:
    from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT

    loadtest = compose["services"]["loadtest"]
    assert loadtest["entrypoint"] == ["fashionbox", "loadtest"]
    assert loadtest["depends_on"] == {"triton": {"condition": "service_healthy"}}
    command = loadtest["command"]
    assert command[command.index("--url") + 1] == f"triton:{DEFAULT_GRPC_PORT}"
    assert command[command.index("--metrics") + 1] == f"triton:{DEFAULT_METRICS_PORT}"
    assert "loadtest" in (ROOT / "deploy/triton.Dockerfile").read_text()  # the [loadtest] extra is installed


def test_compose_publishes_the_contract_ports(compose: dict[str, Any]) -> None:
    from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

    for name, ports in (("triton", {DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT}),
                        ("triton-secure", {DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT})):  # its HTTP: loopback only
        published = {int(p.split(":")[-1]) for p in compose["services"][name]["ports"]}
        assert published == ports


# -- Kubernetes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            key = f"{document['kind']}/{document['metadata']['name']}" if "metadata" in document else document["kind"]
            assert key not in documents, f"{key} defined twice"
            documents[key] = document
    return documents


def _pod(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = k8s["Deployment/fashionbox-triton"]["spec"]["template"]["spec"]
    return spec


def _triton(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in _pod(k8s)["containers"] if c["name"] == "triton")


def test_kustomization_lists_every_manifest(k8s: dict[str, dict[str, Any]]) -> None:
    listed = k8s["Kustomization"]["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_k8s_runs_the_compose_image_and_command(k8s: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    triton = _triton(k8s)
    assert triton["image"] == compose["services"]["triton"]["image"] == f"fashionbox/triton:{TRITON_RELEASE}"
    assert triton["command"] == compose["services"]["triton"]["entrypoint"]
    assert triton["args"] == compose["services"]["triton"]["command"]  # the same server, the same flags
    builder = next(c for c in _pod(k8s)["initContainers"] if c["name"] == "engine-builder")
    assert builder["image"] == compose["services"]["engine-builder"]["image"]
    assert "sh /models/build_engines.sh" in " ".join(builder["command"])


def test_every_replica_gets_a_gpu_and_a_read_only_repository(k8s: dict[str, dict[str, Any]]) -> None:
    pod = _pod(k8s)
    triton = _triton(k8s)
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    source = volumes["model-source"]["persistentVolumeClaim"]
    assert source["readOnly"] is True


def test_probes_read_the_supervisors_verdict_and_tritons_liveness_on_the_contract_ports(
    k8s: dict[str, dict[str, Any]],
) -> None:
    from fashionbox.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

    triton = _triton(k8s)
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
    config = _serve_config(triton["args"], environ={"FASHIONBOX_ADMIN_KEY": ADMIN_KEY})
    assert config.ready_file is not None
    verdict = {"command": ["test", "-f", str(config.ready_file)]}
    assert triton["readinessProbe"]["exec"] == verdict and triton["startupProbe"]["exec"] == verdict
    probe = triton["livenessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/v2/health/live", "http")
    # HTTP answers only the names it is served under (fashionbox.core.cross_site): the probe sends one of them.
    sites = SitePolicy(allowed_hosts(config.http_host, config.http_allowed_hosts), flag="", subject="")
    assert sites.hosts is not None, "bound to every interface, HTTP would answer any name: DNS rebinding"
    headers = {h["name"].lower(): h["value"] for h in probe["httpHeaders"]}
    assert sites.refusal("GET", headers) is None
    assert sites.refusal("GET", {"host": "10.1.2.3:8000"}) is not None  # the kubelet's default: the pod's IP
    annotations = k8s["Deployment/fashionbox-triton"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULT_METRICS_PORT)


def test_a_terminating_pod_drains_the_ensemble_before_tritons_exit_timeout(k8s: dict[str, dict[str, Any]]) -> None:
    from fashionbox.contract import ADMIN_KEY_NAME
    from fashionbox.server.security import ADMIN_APIS

    triton = _triton(k8s)
    env = {e["name"]: e for e in triton["env"]}
    assert env["FASHIONBOX_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "fashionbox-admin-key"
    config = _serve_config(triton["args"], environ={"FASHIONBOX_ADMIN_KEY": ADMIN_KEY})
    # Every model loaded, nothing loadable from outside: the repository API needs the admin key, and
    # `fashionbox serve` unloads the ensemble with it on SIGTERM before Triton stops (no preStop hook).
    assert config.admin_key == ADMIN_KEY and config.drain_on_stop
    args = _triton_command(config)
    assert _flag(args, "--model-control-mode") == "explicit" and _flag(args, "--load-model") == "*"
    restriction = f"{','.join(ADMIN_APIS)}:{ADMIN_KEY_NAME}={ADMIN_KEY}"
    assert _flag(args, "--grpc-restricted-protocol") == _flag(args, "--http-restricted-api") == restriction
    assert "lifecycle" not in triton
    assert _pod(k8s)["terminationGracePeriodSeconds"] > _stop_budget_s(config)


def test_grpc_is_served_by_a_headless_service_for_per_call_balancing(k8s: dict[str, dict[str, Any]]) -> None:
    labels = k8s["Deployment/fashionbox-triton"]["spec"]["template"]["metadata"]["labels"]
    assert k8s["Deployment/fashionbox-triton"]["spec"]["selector"]["matchLabels"] == labels
    grpc = k8s["Service/fashionbox-grpc"]["spec"]
    assert grpc["clusterIP"] == "None" and grpc["selector"] == labels
    assert grpc["ports"] == [{"name": "grpc", "port": 8001, "targetPort": "grpc", "appProtocol": "grpc"}]
    assert k8s["Service/fashionbox-metrics"]["spec"]["selector"] == labels


def test_the_autoscaler_follows_tritons_queue_time(k8s: dict[str, dict[str, Any]]) -> None:
    hpa = k8s["HorizontalPodAutoscaler/fashionbox-triton"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fashionbox-triton"}
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    rules = yaml.safe_load(k8s["ConfigMap/prometheus-adapter-fashionbox"]["data"]["config.yaml"])["rules"]
    (rule,) = rules
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert "rate(<<.Series>>" in rule["metricsQuery"]


def test_a_disruption_budget_keeps_a_replica_serving(k8s: dict[str, dict[str, Any]]) -> None:
    pdb = k8s["PodDisruptionBudget/fashionbox-triton"]["spec"]
    labels = k8s["Deployment/fashionbox-triton"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"] == labels
    assert 1 <= pdb["minAvailable"] < k8s["HorizontalPodAutoscaler/fashionbox-triton"]["spec"]["minReplicas"]
