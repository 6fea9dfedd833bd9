"""deploy/kubernetes without a cluster: every kustomization renders offline with `kubectl kustomize`, every
object is checked against the Kubernetes schemas, and the manifests agree with what `nrp export triton`
writes and with what Triton is told.

Built-in kinds are validated with kubernetes-validate in strict mode (an unknown field fails) against the
oldest and the newest Kubernetes release named below. The custom resources (the Prometheus Operator's
ServiceMonitor, KServe's InferenceService) have no schema there: their apiVersion, kind and required fields
are checked here, the pod parts of an InferenceService are validated as a Pod, and their references (ports,
labels, volumes) are compared with the objects they point at. Without kubernetes-validate (the kubernetes
extra) the tests skip locally and fail under CI=true (tests/ci_rule.py). kubectl comes with the machine,
not with the project (Debian's package is 1.20, too old for kustomize components): without it the rendering
tests skip, in CI too, and the files that hold whole objects are still validated as written.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from ci_rule import unavailable

from nrp_deploy.export.onnx import export_onnx
from nrp_deploy.models.spec import ModelSpec
from nrp_deploy.serving import protocol
from nrp_deploy.serving.triton_export import TRITON_IMAGE, TritonExportOptions, export_triton_repository
from nrp_deploy.serving.triton_server import Endpoints, TritonServer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes release the manifests are written for and the newest the schemas go to.
KUBERNETES_VERSIONS = ("1.29", "1.37")
SERVING = ("base", "overlays/cpu", "overlays/gpu", "overlays/gpu-s3")
KUSTOMIZATIONS = (*SERVING, "prometheus-adapter")
#: Manifests applied with `kubectl apply -f`, outside any kustomization.
PLAIN = ("repository-loader.yaml", "kserve/inference-service.yaml")
#: Every file that holds whole objects (validated as written, kubectl or not).
COMPLETE = (
    *PLAIN,
    "base/model-repository.yaml",
    "base/deployment.yaml",
    "base/service.yaml",
    "base/hpa.yaml",
    "components/service-monitor/service-monitor.yaml",
)
#: Custom resources: (apiVersion, kind) -> the fields their CRDs require.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("spec.selector", "spec.endpoints"),
    ("serving.kserve.io/v1beta1", "InferenceService"): ("spec.predictor",),
}
#: Triton's health endpoints (KServe v2 protocol); tests/serving/test_serve.py calls them on a real server.
LIVE, READY = "/v2/health/live", "/v2/health/ready"
INSTANCE_KIND = {"overlays/cpu": "KIND_CPU", "overlays/gpu": "KIND_GPU"}


def _documents(text: str) -> list[dict]:
    try:
        import yaml
    except ImportError:
        unavailable("PyYAML is not installed (the kubernetes extra): pip install -e '.[kubernetes]'")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders deploy/kubernetes")
    return kubectl


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Each kustomization's objects, rendered offline."""
    kubectl = _kubectl()
    out = {}
    for name in KUSTOMIZATIONS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"kubectl kustomize {name} failed:\n{proc.stderr}"
        out[name] = _documents(proc.stdout)
    return out


@pytest.fixture(scope="module")
def plain() -> dict[str, list[dict]]:
    return {name: _documents((DEPLOY / name).read_text(encoding="utf-8")) for name in PLAIN}


@pytest.fixture(scope="module")
def repositories(tmp_path_factory) -> dict[str, Path]:
    """What `nrp export triton` writes for a tiny purifier, with and without --gpu."""
    folder = tmp_path_factory.mktemp("kubernetes")
    torch.manual_seed(0)
    checkpoint = folder / "tiny.pth"
    torch.save(ModelSpec("NRP_resG", {"nf": 8, "nb": 1}).build().state_dict(), checkpoint)
    export_onnx(str(checkpoint), folder / "tiny.onnx")
    return {
        kind: export_triton_repository(
            str(folder / "tiny.onnx"), folder / kind, TritonExportOptions(gpu=kind == "KIND_GPU")
        )
        for kind in ("KIND_CPU", "KIND_GPU")
    }


def _configs(repository: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text(encoding="utf-8") for p in repository.glob("*/config.pbtxt")}


def _network_model(repository: Path) -> str:
    """The model with Triton's dynamic batcher: the network, where requests queue for the GPU or cores."""
    (name,) = [name for name, text in _configs(repository).items() if "dynamic_batching" in text]
    return name


def _validate(obj: dict, version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable(
            "kubernetes-validate is not installed (the kubernetes extra): pip install -e '.[kubernetes]'"
        )
    kubernetes_validate.validate(obj, version, strict=True)


def _one(objects: list[dict], kind: str) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def _container(objects: list[dict], name: str = "triton") -> dict:
    spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return container


def _args(container: dict) -> dict[str, str]:
    """``--name=value`` arguments, ``$(VAR)`` expanded from the container's env as Kubernetes does."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    pairs = (arg.removeprefix("--").split("=", 1) for arg in container["args"])
    return {key: re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value) for key, value in pairs}


def _field(obj: dict, dotted: str) -> object:
    for key in dotted.split("."):
        obj = obj[key]
    return obj


def _check(obj: dict) -> None:
    """Built-in kinds against the schemas; custom resources for their required fields."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CUSTOM_RESOURCES:
        for field in CUSTOM_RESOURCES[key]:
            assert _field(obj, field), f"{obj['kind']} {obj['metadata']['name']} lacks {field}"
        return
    for version in KUBERNETES_VERSIONS:
        _validate(obj, version)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_its_objects_validate_strictly(rendered, name: str):
    objects = rendered[name]
    assert objects, f"{name} renders nothing"
    for obj in objects:
        _check(obj)
    namespaces = {obj["metadata"].get("namespace") for obj in objects}
    expected = {"base": None, "prometheus-adapter": "monitoring"}.get(name, "nrp")
    assert namespaces == {expected}, f"{name}: objects in {namespaces}"


@pytest.mark.parametrize("name", COMPLETE)
def test_every_complete_manifest_validates_as_written(name: str):
    """The files that hold whole objects, checked without kubectl (the overlays' patches are partial)."""
    objects = _documents((DEPLOY / name).read_text(encoding="utf-8"))
    assert objects
    for obj in objects:
        _check(obj)


def test_every_yaml_file_is_a_kustomization_what_one_uses_or_checked_as_written():
    used = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        (spec,) = _documents(kustomization.read_text(encoding="utf-8"))
        files = [p["path"] for p in spec.get("patches", [])]
        files += [f for generator in spec.get("configMapGenerator", []) for f in generator["files"]]
        files += [r for r in spec.get("resources", []) if r.endswith(".yaml")]
        used |= {(kustomization.parent / f).resolve() for f in files}
    for path in DEPLOY.rglob("*.yaml"):
        name = path.relative_to(DEPLOY).as_posix()
        assert path.name == "kustomization.yaml" or path.resolve() in used or name in COMPLETE, name
    assert {(DEPLOY / name).resolve() for name in COMPLETE} - used == {(DEPLOY / n).resolve() for n in PLAIN}


def test_strict_validation_rejects_a_misspelt_field():
    (deployment,) = _documents((DEPLOY / "base" / "deployment.yaml").read_text(encoding="utf-8"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(Exception, match="readinessProbes"):
        _validate(deployment, KUBERNETES_VERSIONS[-1])


def test_the_kserve_predictor_is_a_triton_model_and_a_valid_pod(plain):
    (service,) = plain["kserve/inference-service.yaml"]
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    # The predictor is a PodSpec with KServe's scaling fields and a model that is a Container with KServe's
    # framework fields: without those, it must validate as a Pod.
    framework = ("modelFormat", "protocolVersion", "runtimeVersion", "storageUri", "runtime")
    container = {"name": "kserve-container", **{k: v for k, v in model.items() if k not in framework}}
    scaling = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "model")
    pod_spec = {**{k: v for k, v in predictor.items() if k not in scaling}, "containers": [container]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": service["metadata"], "spec": pod_spec}
    for version in KUBERNETES_VERSIONS:
        _validate(pod, version)
    (loader,) = plain["repository-loader.yaml"]
    assert service["metadata"]["namespace"] == loader["metadata"]["namespace"] == "nrp"


def test_the_image_is_the_triton_release_the_repository_is_written_for(rendered, plain):
    for name in SERVING:
        spec = _one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] == TRITON_IMAGE, (name, container["name"])
    (service,) = plain["kserve/inference-service.yaml"]
    assert service["spec"]["predictor"]["model"]["runtimeVersion"] == TRITON_IMAGE.rsplit(":", 1)[1]


@pytest.mark.parametrize("name", SERVING)
def test_ports_and_probes_are_the_ones_triton_is_told_to_serve(rendered, name: str):
    objects = rendered[name]
    defaults = Endpoints()  # `nrp serve`'s ports, which clients and the repository's README assume
    expected = {"http": defaults.http_port, "grpc": defaults.grpc_port, "metrics": defaults.metrics_port}
    triton = _container(objects)
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == expected
    args = _args(triton)
    assert {port: int(args[f"{port}-port"]) for port in expected} == expected
    assert args["allow-metrics"] == "true" and args["strict-readiness"] == "true"
    assert triton["readinessProbe"]["httpGet"] == {"path": READY, "port": "http"}
    assert (
        triton["livenessProbe"]["httpGet"]
        == triton["startupProbe"]["httpGet"]
        == {"path": LIVE, "port": "http"}
    )
    service = _one(objects, "Service")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (port, name) for name, port in expected.items()
    }
    template = _one(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    annotations = template["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == expected["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}


@pytest.mark.parametrize("name", SERVING)
def test_sigkill_never_cuts_the_exit_timeout_short(rendered, name: str):
    triton = _container(rendered[name])
    spec = _one(rendered[name], "Deployment")["spec"]["template"]["spec"]
    pause = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    exit_timeout = int(_args(triton)["exit-timeout-secs"])
    serve_default = inspect.signature(TritonServer).parameters["exit_timeout_s"].default
    assert exit_timeout == serve_default  # the exit timeout `nrp serve` gives Triton
    assert spec["terminationGracePeriodSeconds"] > int(pause[1]) + exit_timeout


def test_triton_reads_the_repository_where_the_loader_and_kserve_put_it(rendered, plain):
    objects = rendered["overlays/gpu"]
    claim = _one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    repository = Path(_args(_container(objects))["model-repository"])
    for container in spec["containers"] + spec["initContainers"]:
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] and repository.parent == Path(mount["mountPath"])
    (loader,) = plain["repository-loader.yaml"]
    (loader_volume,) = loader["spec"]["volumes"]
    assert loader_volume["persistentVolumeClaim"]["claimName"] == claim
    (loader_mount,) = loader["spec"]["containers"][0]["volumeMounts"]
    assert Path(loader_mount["mountPath"]) == repository.parent and not loader_mount.get("readOnly")
    (service,) = plain["kserve/inference-service.yaml"]
    assert service["spec"]["predictor"]["model"]["storageUri"] == f"pvc://{claim}/{repository.name}"

    s3 = rendered["overlays/gpu-s3"]
    assert not [o for o in s3 if o["kind"] == "PersistentVolumeClaim"]
    s3_spec = _one(s3, "Deployment")["spec"]["template"]["spec"]
    assert not s3_spec.get("initContainers") and "persistentVolumeClaim" not in str(s3_spec["volumes"])
    assert _args(_container(s3))["model-repository"].startswith("s3://")


@pytest.mark.parametrize("name", INSTANCE_KIND)
def test_the_overlays_resources_fit_the_repository_they_serve(rendered, repositories, name: str):
    kind = INSTANCE_KIND[name]
    network = _configs(repositories[kind])[_network_model(repositories[kind])]
    assert f"kind: {kind}" in network  # the export the overlay's README step names
    limits = _container(rendered[name])["resources"].get("limits", {})
    assert ("nvidia.com/gpu" in limits) == (kind == "KIND_GPU")
    init = _container(rendered[name], "wait-for-repository")
    assert {"name": "NRP_INSTANCE_KIND", "value": kind} in init["env"]


def _wait_for_repository(container: dict, repository: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """The init container's script, run here with the repository at ``repository``."""
    env = {e["name"]: e["value"] for e in container["env"]}
    env["MODEL_REPOSITORY"] = str(repository)
    return subprocess.run(
        container["command"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.parametrize("name", INSTANCE_KIND)
def test_the_init_container_accepts_the_matching_export_and_refuses_the_other(rendered, repositories, name):
    init = _container(rendered[name], "wait-for-repository")
    assert _args(_container(rendered[name]))["model-repository"] == next(
        e["value"] for e in init["env"] if e["name"] == "MODEL_REPOSITORY"
    )
    for kind, repository in repositories.items():
        proc = _wait_for_repository(init, repository, timeout_s=10)
        if kind == INSTANCE_KIND[name]:
            assert proc.returncode == 0, proc.stderr
            assert f"model repository found at {repository}" in proc.stdout
        else:
            assert proc.returncode == 1
            assert f"does not run on {INSTANCE_KIND[name]}" in proc.stderr and "--gpu" in proc.stderr


def test_the_init_container_holds_the_pod_until_the_repository_is_there(rendered, tmp_path):
    init = _container(rendered["overlays/cpu"], "wait-for-repository")
    with pytest.raises(subprocess.TimeoutExpired) as waiting:
        _wait_for_repository(init, tmp_path / "repository", timeout_s=2)
    ensemble = tmp_path / "repository" / protocol.MODEL_NAME / "config.pbtxt"
    assert f"no {ensemble} yet" in waiting.value.stdout.decode()


def test_python_backend_models_get_a_shared_memory_volume(rendered, repositories):
    configs = _configs(repositories["KIND_CPU"])
    assert any('backend: "python"' in text for text in configs.values())
    for name in SERVING:
        spec = _one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        (shm,) = [m for m in _container(rendered[name])["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == shm["name"]]
        assert volume["emptyDir"]["medium"] == "Memory"


def test_the_autoscaler_scales_the_deployment_on_the_adapter_rule_over_the_network_model(
    rendered, repositories
):
    objects = rendered["overlays/gpu"]
    hpa = _one(objects, "HorizontalPodAutoscaler")
    deployment = _one(objects, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"

    config_map = _one(rendered["prometheus-adapter"], "ConfigMap")
    (adapter_config,) = _documents(config_map["data"]["config.yaml"])
    (rule,) = adapter_config["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    network = _network_model(repositories["KIND_GPU"])
    selected = re.findall(r"(nv_\w+)\{([^}]*)\}", rule["seriesQuery"] + " " + rule["metricsQuery"])
    assert {series for series, _ in selected} == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    }
    for _, labels in selected:
        assert f'model="{network}"' in labels
    numerator, denominator = rule["metricsQuery"].split(" / ")
    assert "nv_inference_queue_duration_us" in numerator and "nv_inference_request_success" in denominator
