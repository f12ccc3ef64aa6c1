"""cluster/: the cluster-launcher YAMLs pass Ray's own schema and config validation; the KubeRay
manifests are ray.io/v1 with a GPU worker group, token auth and no inline credentials."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*-gpu.yaml"))
KUBERAY = CLUSTER / "kuberay"
SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _validate_launcher(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, _ray_schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_there_are_aws_and_gcp_launcher_configs() -> None:
    assert {p.name for p in LAUNCHER_CONFIGS} == {"aws-gpu.yaml", "gcp-gpu.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_validation(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    prepared = _validate_launcher(config)
    provider = prepared["provider"]["type"]
    assert provider in ("aws", "gcp")

    workers = {k: v for k, v in prepared["available_node_types"].items() if k != prepared["head_node_type"]}
    node_configs = json.dumps([w["node_config"] for w in workers.values()])
    if provider == "aws":
        assert re.search(r'"InstanceType": "(g|p)\d', node_configs)  # a GPU instance family
    else:
        assert "guestAccelerators" in node_configs and "nvidia" in node_configs

    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[commands] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), commands
    text = path.read_text()
    # No literal keys or tokens (a token read from a secret store, "$(…)", is fine).
    assert not re.search(r"(AKIA[0-9A-Z]{12,}|aws_secret_access_key\s*[:=]|RAY_AUTH_TOKEN=(?!\"?\$\())", text)


def test_launcher_validation_can_fail() -> None:
    config = yaml.safe_load(LAUNCHER_CONFIGS[0].read_text())
    with pytest.raises(jsonschema.ValidationError):
        _validate_launcher({**config, "not_a_ray_key": 1})
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "missing"
    with pytest.raises((ValueError, KeyError)):
        _validate_launcher(broken)


# ------------------------------------------------------------------------------ KubeRay
def _manifests() -> list[dict]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _cluster_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _walk(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
    yield path, node


def test_kuberay_manifests_are_ray_io_v1_raycluster_and_rayjob() -> None:
    docs = _manifests()
    ray_docs = [d for d in docs if d["apiVersion"].startswith("ray.io")]
    assert {d["kind"] for d in ray_docs} == {"RayCluster", "RayJob"}
    assert all(d["apiVersion"] == "ray.io/v1" for d in ray_docs)
    assert not [d for d in docs if d["kind"] == "Secret"]  # secrets are created out of band


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_gpu_worker_group_and_token_auth(kind: str) -> None:
    (doc,) = [d for d in _manifests() if d["kind"] == kind]
    (spec,) = _cluster_specs(doc)
    assert spec["authOptions"]["mode"] == "token" and spec["authOptions"].get("secretName")
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    gpus = [
        int(c["resources"]["limits"]["nvidia.com/gpu"])
        for g in spec["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
    ]
    assert gpus and min(gpus) >= 1
    if kind == "RayJob":
        assert "jobs/train.py" in doc["spec"]["entrypoint"]


def test_kuberay_credentials_come_from_secrets_only() -> None:
    for doc in _manifests():
        for spec in _cluster_specs(doc):
            for container in _containers(spec):
                for env in container.get("env", []):
                    if SECRETISH.search(env["name"]):
                        assert "value" not in env, f"{env['name']} is inline"
                        assert "secretKeyRef" in env["valueFrom"], env["name"]
                for source in container.get("envFrom", []):
                    assert set(source) <= {"secretRef", "configMapRef", "prefix"}
        for path, value in _walk(doc):
            if isinstance(value, str):
                assert not re.search(r"AKIA[0-9A-Z]{12,}", value), path
                assert not re.search(r"(?i)(secret_access_key|auth_token|password)\s*[=:]\s*\S{8,}", value), (
                    path
                )
