"""Every deployment YAML parses and is valid: the Ray cluster launcher config against Ray's own
schema, the KubeRay resources against the CRD fields KubeRay requires, the Serve configs against
hashray's app builder, and the MLflow server manifests; commands in them parse with hashray's CLI.
"""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
KUBERAY = sorted((INFRA / "kuberay").glob("*.yaml"))
SERVE_CONFIGS = sorted((INFRA / "serve").glob("*.yaml"))
MLFLOW = [INFRA / "mlflow" / "docker-compose.yaml", INFRA / "mlflow" / "mlflow-server.yaml"]


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins ``package`` to."""
    (spec,) = [d for d in PYPROJECT["dependencies"] if re.match(rf"{re.escape(package)}(\[|=)", d)]
    return spec.split("==")[1]


def load_all(path: Path) -> list[dict]:
    """Every YAML document in ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_yaml_is_checked_here() -> None:
    checked = {ROOT / "ray_cluster.yaml", *KUBERAY, *SERVE_CONFIGS, *MLFLOW}
    found = {ROOT / "ray_cluster.yaml", *INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")}
    assert found == checked
    assert {p.name for p in KUBERAY} == {"train-job.yaml", "encode-job.yaml", "search-service.yaml"}


# --- Ray cluster launcher (AWS) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_cluster_config_passes_rays_validation(launcher: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(launcher)  # the file as written
    filled = prepare_config(
        copy.deepcopy(launcher)
    )  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(filled)
    assert filled["provider"]["type"] == "aws"


def test_rays_validation_would_catch_a_typo(launcher: dict) -> None:
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(launcher)
    broken["available_node_types"]["gpu_g5_spot"]["max_worker"] = 4  # not a field
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_has_a_cpu_head_and_autoscaled_gpu_workers(launcher: dict) -> None:
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert "min_workers" not in head and "InstanceMarketOptions" not in head["node_config"]
    assert re.match(r"(m|c|r)\d", head["node_config"]["InstanceType"])  # a CPU instance family
    assert "--num-cpus=0" in " ".join(launcher["head_start_ray_commands"])
    gpu = {
        name: t
        for name, t in types.items()
        if t["node_config"]["InstanceType"].startswith(("g5", "p4d"))
    }
    assert {t["node_config"]["InstanceType"] for t in gpu.values()} == {"g5.xlarge", "p4d.24xlarge"}
    for node_type in types.values():
        if node_type is not head:
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert sum(t["min_workers"] for t in types.values() if t is not head) <= launcher["max_workers"]
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        for t in gpu.values()
    )


def test_nodes_install_this_version_and_get_the_environment(launcher: dict) -> None:
    setup = "\n".join(launcher["setup_commands"])
    assert f'"{PYPROJECT["name"]}=={PYPROJECT["version"]}"' in setup
    for variable in ("MLFLOW_TRACKING_URI", "AWS_REGION"):
        assert f"export {variable}=" in setup
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "ray_cluster.yaml").read_text()  # roles, not keys


# --- KubeRay ------------------------------------------------------------------------------------


def cluster_spec(resource: dict) -> dict:
    """The RayCluster spec inside a RayJob or RayService."""
    return resource["spec"][
        "rayClusterSpec" if resource["kind"] == "RayJob" else "rayClusterConfig"
    ]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def gpus_per_pod(group: dict) -> int:
    """The GPUs a worker group's pod asks for (limits and requests must agree)."""
    resources = containers(group)[0]["resources"]
    limit = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
    assert int(resources.get("requests", {}).get("nvidia.com/gpu", limit)) == limit
    return limit


def entrypoint_args(resource: dict):
    """The RayJob entrypoint parsed by hashray's own command-line parser."""
    from pipelines.cli import _parser

    words = shlex.split(resource["spec"]["entrypoint"])
    assert words[0] == "hashray"
    return _parser().parse_args(words[1:])


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_resource_has_the_crd_required_fields(path: Path) -> None:
    (resource,) = load_all(path)
    assert resource["apiVersion"] == "ray.io/v1"
    assert resource["kind"] in {"RayJob", "RayService"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", resource["metadata"]["name"])
    spec = cluster_spec(resource)
    assert spec["rayVersion"] == pinned("ray[train,data,serve]")
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and containers(head)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD wants strings
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for group in [head, *groups]:
        for container in containers(group):
            assert container["name"] and container["image"].endswith(
                f"hashray:{PYPROJECT['version']}"
            )
            resources = container["resources"]
            assert set(resources["requests"]) >= {"cpu", "memory"}
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert isinstance(group["rayStartParams"], dict)


@pytest.mark.parametrize("name", ["train-job.yaml", "encode-job.yaml"])
def test_rayjob_entrypoint_is_a_hashray_command_that_fits_its_gpus(name: str) -> None:
    (job,) = load_all(INFRA / "kuberay" / name)
    assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
    args = entrypoint_args(job)
    (gpu_group,) = [g for g in cluster_spec(job)["workerGroupSpecs"] if gpus_per_pod(g) > 0]
    if name == "train-job.yaml":
        assert args.command == "train"
        assert args.gpus_per_worker == gpus_per_pod(gpu_group) == 1
        assert args.workers <= gpu_group["maxReplicas"] and args.max_failures >= 1
        assert args.cpus_per_worker <= float(containers(gpu_group)[0]["resources"]["limits"]["cpu"])
        assert args.out.startswith("/mnt/")  # runs live on the shared volume every pod mounts
        mounts = [
            m["mountPath"]
            for g in cluster_spec(job)["workerGroupSpecs"]
            for m in containers(g)[0]["volumeMounts"]
        ]
        assert any(args.out.startswith(m) for m in mounts)
    else:
        assert args.command == "encode" and args.gpus
        assert args.actors <= gpu_group["maxReplicas"] and gpus_per_pod(gpu_group) == 1
        assert args.data.startswith("s3://") and args.out.startswith("s3://")


# --- Serve configs: the RayService's serveConfigV2 and `serve deploy` files ----------------------


def serve_configs() -> list[tuple[str, dict]]:
    """(where, parsed Serve config) of the RayService and of infra/serve/."""
    (service,) = load_all(INFRA / "kuberay" / "search-service.yaml")
    assert service["kind"] == "RayService" and isinstance(service["spec"]["serveConfigV2"], str)
    found = [
        ("search-service.yaml serveConfigV2", yaml.safe_load(service["spec"]["serveConfigV2"]))
    ]
    return found + [(p.name, yaml.safe_load(p.read_text())) for p in SERVE_CONFIGS]


@pytest.mark.parametrize(
    "where, config", serve_configs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_serve_config_names_a_buildable_app(where: str, config: dict) -> None:
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serve import ServeArgs

    ServeDeploySchema.model_validate(config)  # Serve's own schema of the `serve build` format
    (app,) = config["applications"]
    module, attribute = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attribute)
    assert callable(builder)
    args = ServeArgs.model_validate(app["args"])  # no unknown or invalid arguments
    assert args.replicas >= 2, f"{where}: one replica per shard drops queries when it dies"


# --- MLflow tracking server ---------------------------------------------------------------------


def test_mlflow_image_is_the_pinned_release() -> None:
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert f"ghcr.io/mlflow/mlflow:v{pinned('mlflow')}" in dockerfile
    assert "psycopg2" in dockerfile and "boto3" in dockerfile


def test_mlflow_compose_runs_postgres_and_s3_artifacts() -> None:
    (compose,) = load_all(INFRA / "mlflow" / "docker-compose.yaml")
    postgres, server = compose["services"]["postgres"], compose["services"]["mlflow"]
    assert postgres["image"].startswith("postgres:")
    assert server["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    command = server["command"]
    assert command[:2] == ["mlflow", "server"]
    destination = next(c for c in command if c.startswith("--artifacts-destination="))
    assert (
        "s3://" in destination
        and server["depends_on"]["postgres"]["condition"] == "service_healthy"
    )


def test_mlflow_kubernetes_server_reads_postgres_from_a_secret() -> None:
    deployment, service = load_all(INFRA / "mlflow" / "mlflow-server.yaml")
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    assert any(a.startswith("--artifacts-destination=s3://") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
