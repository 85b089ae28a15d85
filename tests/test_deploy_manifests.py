"""deploy/: the Kubernetes manifests, the KubeRay RayService and the container images, checked as
far as a machine without a cluster or a Docker engine allows (docs/operations.md says what is
not run here).

- Every manifest parses; the core kinds pass ``kubernetes-validate``'s strict schema of the
  Kubernetes versions below, in the base and in each overlay as Kustomize would build it (a small
  builder here: resources, namespace, images, RFC 6902 patches; no kustomize binary exists here).
- Custom resources (RayService, ServiceMonitor, PodMonitor) have no schema there: their
  apiVersion/kind are checked, the RayService's ``serveConfigV2`` is validated with Ray's own
  ``ServeDeploySchema``, and their references (Services, ports, Secret keys) must resolve.
- Every variable ``vlinders/settings.py`` reads from the environment is in the ConfigMap or
  the Secret, every variable a pod reads comes from one of them, and the Ray pods get every one
  the data plane (``inference/serving``) reads.
- ``deploy/kuberay/rayservice.yaml`` is exactly what ``manage.py serve render --kuberay``
  renders for the demo catalog under the ConfigMap's settings. To render it again after a change
  of the renderer or the ConfigMap::

      VLINDERS_WRITE_RAYSERVICE=1 pytest tests/test_deploy_manifests.py -k rendered

- The Dockerfiles pass hadolint (the binary) with no finding, each ignore justified.
"""

from __future__ import annotations

import ast
import copy
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
KUBERAY = DEPLOY / "kuberay"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
RAYSERVICE_FILE = KUBERAY / "rayservice.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"

# The oldest and the newest Kubernetes the manifests are meant for (both strict).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CONFIGMAP = "vlinders-config"
SECRET = "vlinders-secrets"
# The custom resources: their CRDs come with the operators (KubeRay, Prometheus Operator).
CUSTOM_KINDS = {
    ("ray.io/v1", "RayService"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
# Read by settings.py but deliberately in neither: fallbacks of VLINDERS_RAY_AUTH_TOKEN, which
# the pods are given (from the Secret's auth_token).
SETTINGS_NOT_DEPLOYED = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
# Ray's own switches, set as literal values by the renderer (not Vlinders settings).
RAY_LITERAL_ENV = re.compile(r"^(RAY_\w+|PROMETHEUS_MULTIPROC_DIR)$")
# What the data plane reads from its environment with a default that is right for a cluster:
# not required in the Ray pods.
# Switches the data plane reads with a default, which an operator may set on the Ray pods: the
# stream batching measurement switch, and the access line of every successful request.
DATA_PLANE_OPTIONAL_ENV = {"VLINDERS_STREAM_BATCHING", "VLINDERS_ACCESS_LOG"}
CONTROL_PLANE_CONTAINERS = {
    "vlinders-web": "web",
    "vlinders-worker": "worker",
    "vlinders-beat": "beat",
    "vlinders-migrate": "migrate",
}


# --- loading --------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted([*K8S.rglob("*.yaml"), *KUBERAY.rglob("*.yaml")])


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _kustomization(folder: Path) -> dict[str, Any]:
    return _load(folder / "kustomization.yaml")


def _resources(folder: Path) -> list[dict[str, Any]]:
    """The resources of a kustomization folder, built as ``kustomize build`` would for the
    features used here: resources (files and folders), patches (RFC 6902 with a target),
    namespace, images. Anything else in a kustomization fails the test (not simulated)."""
    kustomization = _kustomization(folder)
    unsupported = set(kustomization) - {
        "apiVersion",
        "kind",
        "resources",
        "patches",
        "namespace",
        "images",
    }
    assert not unsupported, f"{folder}: not simulated by this test: {unsupported}"
    built: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            built.extend(_resources(target))
        else:
            built.extend(doc for doc in yaml.safe_load_all(target.read_text()) if doc)
    for patch in kustomization.get("patches", []):
        matches = [doc for doc in built if _targets(patch["target"], doc)]
        assert len(matches) == 1, f"{folder}: patch {patch} targets {len(matches)} resources"
        operations = _load(folder / patch["path"])
        _apply_json_patch(matches[0], operations, where=f"{folder}/{patch['path']}")
    if "namespace" in kustomization:
        for doc in built:
            doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in _all_containers(built):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return built


def _targets(target: dict[str, str], doc: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (
        target.get("kind", doc["kind"]) == doc["kind"]
        and target.get("name", doc["metadata"]["name"]) == doc["metadata"]["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def _apply_json_patch(doc: dict[str, Any], operations: list[dict[str, Any]], where: str) -> None:
    """RFC 6902 ``add``/``replace``/``remove``; a path that does not exist fails (as kustomize
    fails), so a patch cannot silently miss its resource."""
    assert isinstance(operations, list), f"{where}: a JSON patch is a list of operations"
    for op in operations:
        *parents, last = [
            part.replace("~1", "/").replace("~0", "~") for part in op["path"][1:].split("/")
        ]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                node[last] = copy.deepcopy(op["value"])
        elif op["op"] in {"replace", "remove"}:
            key: Any = int(last) if isinstance(node, list) else last
            if isinstance(node, list):
                assert key < len(node), f"{where}: {op['path']} does not exist"
            else:
                assert key in node, f"{where}: {op['path']} does not exist"
            if op["op"] == "replace":
                node[key] = copy.deepcopy(op["value"])
            else:
                del node[key]
        else:
            pytest.fail(f"{where}: operation {op['op']} is not used here")


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        elif doc["kind"] == "RayService":
            cluster = doc["spec"]["rayClusterConfig"]
            yield f"{doc['metadata']['name']}/head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster["workerGroupSpecs"]:
                yield f"{doc['metadata']['name']}/{group['groupName']}", group["template"]["spec"]


def _all_containers(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for _, spec in _pod_specs(docs):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _configmap(docs: list[dict[str, Any]] | None = None) -> dict[str, str]:
    return _one(docs or _resources(BASE), "ConfigMap", CONFIGMAP)["data"]


def _secret_example() -> dict[str, str]:
    secret = _load(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == SECRET
    return secret["stringData"]


def _settings_env_names() -> set[str]:
    """Every variable vlinders/settings.py reads from the environment, from its source: the
    names passed to its readers (_env, _env_bool, _env_list, _secret, _fernet_keys) and to
    os.environ.get / os.getenv / os.environ[...]."""
    readers = {"_env", "_env_bool", "_env_list", "_secret", "_fernet_keys"}
    environ = {"os.environ.get", "os.getenv"}
    names: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / "vlinders" / "settings.py").read_text())):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            func = ast.unparse(node.func)
            if (func in readers or func in environ) and isinstance(first, ast.Constant):
                names.add(str(first.value))
        if (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) == "os.environ"
            and isinstance(node.slice, ast.Constant)
        ):
            names.add(str(node.slice.value))
    return names


def _data_plane_env_names() -> set[str]:
    """The VLINDERS_* variables the data plane (inference/serving, no Django) reads."""
    pattern = re.compile(
        r"os\.environ\.get\(\s*\"(VLINDERS_\w+)\"|os\.environ\[\"(VLINDERS_\w+)\"\]"
    )
    names: set[str] = set()
    for path in (ROOT / "inference" / "serving").rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names


# --- every file parses; the kustomizations name every file ---------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} is empty"
    for doc in docs:
        if path.parent.name == "patches":
            assert isinstance(doc, list), path
            assert all("op" in op and "path" in op for op in doc), path
        else:
            assert isinstance(doc, dict), path
            assert {"apiVersion", "kind"} <= set(doc), path


@pytest.mark.parametrize(
    "folder", [BASE, KUBERAY, *OVERLAYS], ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_kustomization_names_every_file(folder: Path) -> None:
    kustomization = _kustomization(folder)
    named = {
        (folder / entry).resolve()
        for entry in kustomization.get("resources", [])
        if not (folder / entry).is_dir()
    }
    named |= {(folder / patch["path"]).resolve() for patch in kustomization.get("patches", [])}
    files = {p.resolve() for p in folder.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert named == files, (
        f"{folder}: not in the kustomization: {sorted(map(str, files - named))}; "
        f"named but missing: {sorted(map(str, named - files))}"
    )
    for entry in kustomization.get("resources", []):
        target = folder / entry
        assert target.exists(), f"{folder}: {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{entry} has no kustomization"


# --- schema validation ----------------------------------------------------------------------


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(DEPLOY)))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_resources_pass_strict_schema_validation(folder: Path, version: str) -> None:
    docs = _resources(folder)
    kinds = {doc["kind"] for doc in docs}
    assert {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
    } <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_secret_example_passes_strict_validation_and_holds_only_placeholders() -> None:
    secret = _load(SECRET_EXAMPLE)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    assert "EXAMPLE ONLY" in SECRET_EXAMPLE.read_text()
    for key, value in secret["stringData"].items():
        # Empty (an optional key), PLACEHOLDER, or an address under example. (RFC 2606).
        marked = value == "" or "PLACEHOLDER" in value or ".example." in value
        assert marked, f"{key} is not a marked placeholder"


def test_a_broken_manifest_fails_validation() -> None:
    """The validation is not vacuous: a misspelt field and a wrong type are refused."""
    web = _one(_resources(BASE), "Deployment", "vlinders-web")
    misspelt = copy.deepcopy(web)
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    wrong_type = copy.deepcopy(web)
    wrong_type["spec"]["revisionHistoryLimit"] = "five"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_a_patch_that_misses_fails_the_build(tmp_path: Path) -> None:
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}
    with pytest.raises(AssertionError):
        _apply_json_patch(doc, [{"op": "replace", "path": "/data/missing", "value": "1"}], "t")


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_custom_resources(folder: Path) -> None:
    docs = _resources(folder)
    custom = [
        d for d in docs if "/" in d["apiVersion"] and d["kind"] in {k for _, k in CUSTOM_KINDS}
    ]
    assert {(d["apiVersion"], d["kind"]) for d in custom} == CUSTOM_KINDS
    from ray.serve.schema import ServeDeploySchema

    rayservice = _one(docs, "RayService", "vlinders")
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": 8000} in head["ports"]
    # Every Ray pod runs the same image (Ray needs one environment across the cluster).
    images = {c["image"] for c in _all_containers([rayservice])}
    assert len(images) == 1, images

    web_service = _one(docs, "Service", "vlinders-web")
    web_monitor = _one(docs, "ServiceMonitor", "vlinders-web")
    assert web_monitor["spec"]["selector"]["matchLabels"].items() <= (
        web_service["metadata"]["labels"].items()
    )
    assert [e["port"] for e in web_monitor["spec"]["endpoints"]] == [
        p["name"] for p in web_service["spec"]["ports"]
    ]
    (web_endpoint,) = web_monitor["spec"]["endpoints"]
    assert web_endpoint["path"] == "/metrics"
    assert web_endpoint["authorization"]["credentials"] == {"name": SECRET, "key": "metrics_token"}
    gateway_monitor = _one(docs, "ServiceMonitor", "vlinders-gateway")
    # KubeRay labels the RayService's serve Service ray.io/serve=<name>-serve, port "serve".
    assert gateway_monitor["spec"]["selector"]["matchLabels"] == {
        "ray.io/serve": f"{rayservice['metadata']['name']}-serve"
    }
    (endpoint,) = gateway_monitor["spec"]["endpoints"]
    assert endpoint["port"] == "serve"
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert credentials["name"] == SECRET
    assert credentials["key"] in _secret_example()
    pod_monitor = _one(docs, "PodMonitor", "vlinders-ray")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}


# --- settings: every one deployed, every pod's variable from the ConfigMap or the Secret -----


def _secret_env(spec: dict[str, Any]) -> dict[str, str]:
    return {
        env["name"]: env["valueFrom"]["secretKeyRef"]["key"]
        for container in spec["containers"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }


def test_every_setting_is_in_the_configmap_or_the_secret() -> None:
    docs = _resources(BASE)
    configmap = set(_configmap(docs))
    web_spec = _one(docs, "Deployment", "vlinders-web")["spec"]["template"]["spec"]
    from_secret = set(_secret_env(web_spec))
    read = _settings_env_names()
    assert len(read) > 50  # the parser found settings.py's reads
    missing = read - configmap - from_secret - SETTINGS_NOT_DEPLOYED
    assert not missing, f"settings.py reads these, neither ConfigMap nor Secret has them: {missing}"
    stale = (configmap | from_secret) - read
    assert not stale, f"deployed but never read by settings.py: {stale}"
    assert not configmap & from_secret, "a setting in both the ConfigMap and the Secret"


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_pod_variable_comes_from_the_configmap_or_the_secret(folder: Path) -> None:
    docs = _resources(folder)
    configmap = _configmap(docs)
    secret = _secret_example()
    settings_names = _settings_env_names()
    for where, spec in _pod_specs(docs):
        for container in spec["containers"]:
            names = [env["name"] for env in container.get("env", [])]
            assert len(names) == len(set(names)), f"{where}: a variable set twice: {names}"
            for source in container.get("envFrom", []):
                assert source == {"configMapRef": {"name": CONFIGMAP}}, f"{where}: {source}"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == SECRET, where
                    assert ref["secretKeyRef"]["key"] in secret, f"{where}: {env}"
                elif "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] == CONFIGMAP, where
                    assert ref["configMapKeyRef"]["key"] in configmap, f"{where}: {env}"
                else:
                    # A literal: only Ray's own switches, never a Vlinders setting.
                    assert RAY_LITERAL_ENV.match(env["name"]), f"{where}: literal {env}"
                    assert env["name"] not in settings_names, f"{where}: literal {env}"


def test_the_control_plane_pods_read_the_same_settings() -> None:
    docs = _resources(BASE)
    specs = {name: spec for name, spec in _pod_specs(docs) if name in CONTROL_PLANE_CONTAINERS}
    assert set(specs) == set(CONTROL_PLANE_CONTAINERS)
    envs = {name: spec["containers"][0].get("env") for name, spec in specs.items()}
    env_froms = {name: spec["containers"][0].get("envFrom") for name, spec in specs.items()}
    assert len({yaml.safe_dump(e) for e in envs.values()}) == 1, "control-plane env differs"
    assert len({yaml.safe_dump(e) for e in env_froms.values()}) == 1
    # The secret variables are the ones the RayService reads under the same keys.
    web_secret = _secret_env(specs["vlinders-web"])
    rayservice = _one(docs, "RayService", "vlinders")
    for _, ray_spec in _pod_specs([rayservice]):
        for name, key in _secret_env(ray_spec).items():
            alias = {"RAY_AUTH_TOKEN": "VLINDERS_RAY_AUTH_TOKEN"}.get(name, name)
            assert web_secret[alias] == key, f"{name}: the Ray pods read {key}"
    # Required keys are in the example with a value; optional ones are marked optional.
    secret = _secret_example()
    for env in envs["vlinders-web"]:
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref.get("optional", False) == (secret[ref["key"]] == ""), env


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(DEPLOY)))
def test_the_ray_pods_get_what_the_data_plane_reads(folder: Path) -> None:
    needed = _data_plane_env_names() - DATA_PLANE_OPTIONAL_ENV
    assert {"VLINDERS_KEY_PEPPER", "VLINDERS_SECRETS_KEY", "VLINDERS_METRICS_TOKEN"} <= needed
    rayservice = _one(_resources(folder), "RayService", "vlinders")
    for where, spec in _pod_specs([rayservice]):
        names = {env["name"] for env in spec["containers"][0]["env"]}
        assert needed <= names, f"{where} lacks {needed - names}"


# --- the pods: probes, resources, security ----------------------------------------------------


def test_pods_are_non_root_read_only_and_bounded() -> None:
    docs = _resources(BASE)
    for where, spec in _pod_specs(docs):
        if where not in CONTROL_PLANE_CONTAINERS:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
    rayservice = _one(docs, "RayService", "vlinders")
    for where, spec in _pod_specs([rayservice]):
        (container,) = spec["containers"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
        # Shared memory for Ray's object store and vLLM (not the container's 64 MiB default).
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in spec["volumes"], where
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"], where


def test_web_tier_probes_autoscaling_and_disruption_budget(client, settings) -> None:
    docs = _resources(BASE)
    configmap = _configmap(docs)
    web = _one(docs, "Deployment", "vlinders-web")
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in web["spec"], "the HPA owns the web tier's replica count"
    (container,) = web["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    allowed_hosts = configmap["ALLOWED_HOSTS"].split(",")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports, probe
        (host,) = [h["value"] for h in get["httpHeaders"] if h["name"] == "Host"]
        assert host in allowed_hosts, f"{probe}: Host {host} is not in ALLOWED_HOSTS"
        # The probe's request answers 200 under the ConfigMap's production settings: the path
        # exists, the Host is allowed, and HTTPS redirection spares it.
        settings.ALLOWED_HOSTS = allowed_hosts
        settings.SECURE_SSL_REDIRECT = True
        response = client.get(get["path"], HTTP_HOST=host)
        assert response.status_code == 200, (probe, response.status_code)
    assert container["command"][:2] == ["uvicorn", "vlinders.asgi:application"]
    assert container["command"][container["command"].index("--port") + 1] == str(ports["http"])

    service = _one(docs, "Service", "vlinders-web")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    pdb = _one(docs, "PodDisruptionBudget", "vlinders-web")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = _one(docs, "HorizontalPodAutoscaler", "vlinders-web")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "vlinders-web",
    }
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_the_configmap_is_a_production_configuration(tmp_path: Path) -> None:
    """A process started with the ConfigMap and a filled-in Secret (as every control-plane pod
    is) is in production mode, passes `manage.py check --deploy` with no warning, and writes
    nothing to VLINDERS_VAR_DIR (the root file system is read-only)."""
    import secrets as random

    from cryptography.fernet import Fernet

    var_dir = tmp_path / "var"
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(_configmap())
    env.update(
        VLINDERS_VAR_DIR=str(var_dir),
        SECRET_KEY=random.token_urlsafe(50),
        VLINDERS_KEY_PEPPER=random.token_urlsafe(50),
        VLINDERS_METRICS_TOKEN=random.token_urlsafe(50),
        VLINDERS_SECRETS_KEY=Fernet.generate_key().decode(),
        VLINDERS_RAY_AUTH_TOKEN=random.token_urlsafe(50),
        DATABASE_URL="postgres://vlinders:unused@postgres.example.internal:5432/vlinders",
        REDIS_URL=_secret_example()["redis_url"],
    )
    assert env["VLINDERS_ENV"] == "production"
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not var_dir.exists(), "a production process wrote to VLINDERS_VAR_DIR"


def test_prometheus_can_scrape_a_web_pod(client, settings) -> None:
    """The web ServiceMonitor's request, as Prometheus sends it to one pod, under the
    ConfigMap's production settings, answers 200."""
    configmap = _configmap()
    settings.ALLOWED_HOSTS = configmap["ALLOWED_HOSTS"].split(",")
    settings.SECURE_SSL_REDIRECT = True
    settings.VLINDERS_METRICS_TOKEN = "scrape-token"
    response = client.get(
        "/metrics", HTTP_HOST="10.1.2.3:8000", HTTP_AUTHORIZATION="Bearer scrape-token"
    )
    assert response.status_code == 200, response.status_code


def test_celery_beat_is_a_single_replica_replaced_not_rolled() -> None:
    docs = _resources(BASE)
    beat = _one(docs, "Deployment", "vlinders-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert beat["spec"]["template"]["spec"]["containers"][0]["command"][:4] == [
        "celery",
        "-A",
        "vlinders",
        "beat",
    ]
    worker = _one(docs, "Deployment", "vlinders-worker")
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    # The Procfile's queues: celery and the usage queue, named by the ConfigMap.
    assert command[command.index("-Q") + 1] == "celery,$(VLINDERS_USAGE_QUEUE)"
    assert "VLINDERS_USAGE_QUEUE" in _configmap(docs)
    migrate = _one(docs, "Job", "vlinders-migrate")
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "manage.py",
        "migrate",
        "--noinput",
    ]


@pytest.mark.parametrize("folder", OVERLAYS, ids=lambda p: p.name)
def test_overlays_set_the_images(folder: Path) -> None:
    docs = _resources(folder)
    ray_images = {c["image"] for c in _all_containers([_one(docs, "RayService", "vlinders")])}
    assert ray_images == {f"ghcr.io/vlinders/vlinders-ray:0.1.0-{folder.name}"}
    if folder.name == "cuda":
        group = _one(docs, "RayService", "vlinders")["spec"]["rayClusterConfig"][
            "workerGroupSpecs"
        ][0]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    for doc in docs:
        assert doc["metadata"]["namespace"] == "vlinders"


# --- the RayService is the renderer's output ------------------------------------------------


def _cluster_settings(settings: Any) -> None:
    """Django settings as the control plane's pods get them: the ConfigMap's values (converted
    as settings.py converts them) and the example Secret's Redis URL."""
    configmap = _configmap()
    secret = _secret_example()
    settings.REDIS_URL = secret["redis_url"]
    settings.CELERY_BROKER_URL = secret.get("celery_broker_url") or secret["redis_url"]
    settings.VLINDERS_REDIS_PREFIX = configmap["VLINDERS_REDIS_PREFIX"]
    settings.VLINDERS_USAGE_QUEUE = configmap["VLINDERS_USAGE_QUEUE"]
    settings.VLINDERS_USAGE_SPOOL_DIR = Path(configmap["VLINDERS_USAGE_SPOOL_DIR"])
    settings.VLINDERS_GATEWAY_HOST = configmap["VLINDERS_GATEWAY_HOST"]
    for name in (
        "VLINDERS_GATEWAY_PORT",
        "VLINDERS_GATEWAY_MIN_REPLICAS",
        "VLINDERS_GATEWAY_MAX_REPLICAS",
        "VLINDERS_MAX_BODY_BYTES",
    ):
        setattr(settings, name, int(configmap[name]))
    for name in ("VLINDERS_ACCESS_CACHE_TTL_S", "VLINDERS_LEASE_S"):
        setattr(settings, name, float(Decimal(configmap[name])))


@pytest.mark.django_db
def test_the_rendered_rayservice_is_the_renderers_output(settings) -> None:
    """deploy/kuberay/rayservice.yaml == `manage.py serve render --kuberay` for the demo
    catalog (`manage.py bootstrap`'s) under the ConfigMap's settings; and what the console's
    Apply sends to the same cluster (render_serve_config under those settings) is exactly its
    serveConfigV2, so KubeRay and the control plane never disagree about the applications."""
    from inference.deployment import render_serve_config

    call_command("bootstrap", stdout=io.StringIO(), stderr=io.StringIO())
    _cluster_settings(settings)
    out = io.StringIO()
    call_command("serve", "render", "--kuberay", stdout=out)
    rendered = out.getvalue()
    if os.environ.get("VLINDERS_WRITE_RAYSERVICE") == "1":
        RAYSERVICE_FILE.write_text(rendered)
    assert RAYSERVICE_FILE.read_text() == rendered, (
        "deploy/kuberay/rayservice.yaml is not the renderer's output: render it again "
        "(VLINDERS_WRITE_RAYSERVICE=1 pytest tests/test_deploy_manifests.py -k rendered)"
    )
    manifest = yaml.safe_load(rendered)
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == render_serve_config()


# --- the container images -------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == "", result.stdout + result.stderr
    assert result.returncode == 0, result.stderr
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rules = line.split("=", 1)[1].split(",")
            reason = " ".join(lines[max(0, number - 4) : number])
            assert all(rule in reason for rule in rules), f"{dockerfile}:{number + 1} unexplained"


def test_hadolint_finds_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def _pyproject_pin(package: str) -> str:
    match = re.search(
        rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text()
    )
    assert match, package
    return match.group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_its_bases_and_copies_what_exists(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "://" not in re.sub(r"(?m)^#.*$", "", text), "an address written into a Dockerfile"
    for image in re.findall(r"(?m)^FROM\s+(\S+)", text):
        name, _, tag = image.partition(":")
        assert tag not in {"", "latest"}, f"{image} is not pinned"
        assert re.search(r"\d", tag), f"{image} is not pinned"
        if name == "rayproject/ray":
            assert tag.startswith(_pyproject_pin("ray") + "-py311-"), image
    for line in re.findall(r"(?m)^COPY\s+(?!--from)(.+)$", text):
        *sources, _dest = [p for p in line.split() if not p.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
    if dockerfile.name == "ray-cpu.Dockerfile":
        # The index is a required build argument: no default, checked before pip runs.
        assert re.search(r"(?m)^ARG TORCH_INDEX_URL$", text)
        assert 'test -n "${TORCH_INDEX_URL}"' in text
    # Never root at run time.
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users, dockerfile.name
    assert users[-1].split(":")[0] not in {"0", "root"}, dockerfile.name


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then name what the images copy"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for line in re.findall(r"(?m)^COPY\s+(?!--from)(.+)$", dockerfile.read_text()):
            *sources, _dest = [p for p in line.split() if not p.startswith("--")]
            for source in sources:
                parts = Path(source.rstrip("/")).parts
                prefixes = {"/".join(parts[: n + 1]) for n in range(len(parts))}
                assert prefixes & allowed, f".dockerignore leaves out {source}"
    assert not {".env", "var", ".venv"} & allowed
