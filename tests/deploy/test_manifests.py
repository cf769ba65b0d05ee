"""Every YAML under deploy/ validated strictly offline, a typo'd key caught at every object of
every manifest, KServe's rules, and kubectl kustomize rendering (where kubectl exists)."""

from __future__ import annotations

import copy
import shutil
import subprocess

import pytest
import yaml

from tests.deploy import rules
from tests.deploy.schemas import DEPLOY, documents, errors, manifests

FREE_FORM = {"labels", "annotations", "nodeSelector", "matchLabels", "selector", "limits", "requests",
             "rayStartParams", "runtime_env", "user_config", "autoscalerOptions"}


def runtimes() -> list[dict]:
    return [d for p in manifests() for d in documents(p) if d.get("kind") in ("ClusterServingRuntime", "ServingRuntime")]


def test_deploy_holds_what_the_recipes_name():
    names = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    assert {"kserve/clusterservingruntime.yaml", "kserve/clusterservingruntime-grpc.yaml", "kserve/isvc-http.yaml",
            "kserve/isvc-grpc.yaml", "kserve/isvc-raw-keda.yaml", "kserve/kustomization.yaml",
            "k8s/deployment-hpa.yaml", "container/Containerfile", "ray/serve_config.yaml", "ray/rayservice.yaml"} <= names


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_is_valid_strictly(path):
    docs = documents(path)
    assert docs
    for doc in docs:
        assert errors(doc) == [], doc.get("kind", "Serve config")


def _objects(node, path=()):
    """Every object in a manifest that a schema describes field by field (not free-form maps)."""
    if isinstance(node, dict):
        if not path or path[-1] not in FREE_FORM:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, (*path, i))


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _typos(doc):
    """(where, key, a copy of doc with that key typo'd) for every key of every object of doc."""
    for where, node in list(_objects(doc)):
        for key in list(node) or [None]:
            broken = copy.deepcopy(doc)
            target = _at(broken, where)
            if key is None:
                target["bogus"] = 1  # an empty object (emptyDir: {}) gets an unknown key
            else:
                target[key + "s" if not key.endswith("s") else key[:-1]] = target.pop(key)  # containerPort -> containerPorts
            yield where, key, broken


def _embedded_typos(doc):
    """A RayService's serveConfigV2 is YAML text: a typo in every key of the Serve config inside it."""
    if doc.get("kind") != "RayService" or not isinstance(doc.get("spec", {}).get("serveConfigV2"), str):
        return
    for where, key, broken_config in _typos(yaml.safe_load(doc["spec"]["serveConfigV2"])):
        broken = copy.deepcopy(doc)
        broken["spec"]["serveConfigV2"] = yaml.safe_dump(broken_config)
        yield ("spec", "serveConfigV2", *where), key, broken


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_a_typo_in_any_key_of_any_object_is_caught(path):
    checked = 0
    for doc in documents(path):
        for where, key, broken in [*_typos(doc), *_embedded_typos(doc)]:
            assert errors(broken), f"{doc.get('kind', 'Serve config')} {'.'.join(map(str, where))}.{key}: typo not caught"
            checked += 1
    assert checked >= 5


RUNTIME = DEPLOY / "kserve" / "clusterservingruntime.yaml"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["spec"]["containers"][0]["ports"][0].update(containerPorts=8080), "containerPorts"),
    (lambda d: d["spec"]["protocolVersions"].append("grpc-v3"), "grpc-v3"),
    (lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0), "minimum"),
    (lambda d: d["spec"]["containers"][0].pop("name"), "'name' is a required property"),
    (lambda d: d["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(paht="/"), "paht"),
    (lambda d: d["spec"].update(container=d["spec"].pop("containers")), "containers"),
])
def test_the_schema_names_each_injected_fault(mutate, message):
    doc = documents(RUNTIME)[0]
    mutate(doc)
    assert any(message in e for e in errors(doc)), errors(doc)


def test_the_runtimes_keep_kserves_rules():
    found = runtimes()
    assert {d["metadata"]["name"] for d in found} == {"triserve", "triserve-grpc"}
    for doc in found:
        assert rules.violations(doc) == [], doc["metadata"]["name"]


def _grpc_runtime() -> dict:
    return next(d for d in runtimes() if d["metadata"]["name"] == "triserve-grpc")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["spec"]["containers"][0].update(name="triserve"), "kserve-container"),
    (lambda d: d["spec"]["containers"][0]["ports"].append({"containerPort": 8081, "name": "x"}), "exactly one serving port"),
    (lambda d: d["spec"]["containers"][0]["ports"][0].update(name="grpc"), "named h2c"),
    (lambda d: d["spec"]["containers"][0]["readinessProbe"].update(grpc={"port": 8080}), "serving port"),
    (lambda d: d["spec"]["containers"][0]["volumeMounts"].append({"name": "m", "mountPath": "/mnt/models"}), "writable"),
    (lambda d: d["spec"]["containers"][0]["volumeMounts"].append({"name": "m", "mountPath": "/mnt"}), "writable"),
    (lambda d: d["spec"]["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    (lambda d: d["spec"]["containers"][0].update(image="ghcr.io/x/triserve:1"), "placeholder"),
    (lambda d: d["spec"]["supportedModelFormats"][0].update(autoSelect=True), "autoSelect"),
    (lambda d: d["spec"]["annotations"].pop("prometheus.kserve.io/path"), "prometheus"),
    (lambda d: d["spec"]["containers"][0]["args"].remove("--model-repository=/mnt/models"), "/mnt/models"),
])
def test_each_kserve_rule_catches_its_fault(mutate, message):
    doc = copy.deepcopy(_grpc_runtime())
    mutate(doc)
    assert any(message in v for v in rules.violations(doc)), rules.violations(doc)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_runtimes_with_the_image_rewritten():
    rendered = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "kserve")], capture_output=True, text=True,
                              timeout=120, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted(d["metadata"]["name"] for d in docs) == ["triserve", "triserve-grpc"]
    for doc in docs:
        assert errors(doc) == []
        assert doc["spec"]["containers"][0]["image"] == "ghcr.io/example/triserve:latest"


RAY_SERVICE = """
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: triserve
spec:
  serveConfigV2: |
    applications:
      - name: triserve
        import_path: triserve.integrations.ray:app
        args:
          model_repository: /models
  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams:
        dashboard-host: 0.0.0.0
      template:
        spec:
          containers:
            - name: ray-head
              image: triserve:replace
    workerGroupSpecs:
      - groupName: workers
        replicas: 2
        minReplicas: 1
        maxReplicas: 4
        rayStartParams: {}
        template:
          spec:
            containers:
              - name: ray-worker
                image: triserve:replace
"""


@pytest.mark.parametrize("mutate, message", [
    (lambda d: None, None),
    (lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imag="x"), "imag"),
    (lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replica=1), "replica"),
    (lambda d: d["spec"].update(serveConfigV2=d["spec"]["serveConfigV2"].replace("import_path", "import_pth")), "import_pth"),
    (lambda d: d["spec"].update(serveConfigV2=d["spec"]["serveConfigV2"].replace("model_repository", "model_repo")), "model_repo"),
])
def test_a_rayservice_is_checked_with_its_embedded_serve_config(mutate, message):
    doc = yaml.safe_load(RAY_SERVICE)
    mutate(doc)
    found = errors(doc)
    if message is None:
        assert found == []
    else:
        assert any(message in e for e in found), found


def test_the_rayservice_runs_the_triserve_app_with_the_models_read_only_on_every_node():
    doc = documents(DEPLOY / "ray" / "rayservice.yaml")[0]
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    assert application["import_path"] == "triserve.integrations.ray:app"
    assert config["grpc_options"]["grpc_servicer_functions"] == [
        f"triserve.integrations.ray.grpc_servicer.{f}" for f in ("add_GRPCInferenceServiceServicer_to_server",
                                                                 "add_TFServingServicers_to_server",
                                                                 "add_TorchServeInferenceServicer_to_server")]
    cluster = doc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "triserve:replace"  # the placeholder, as the other manifests
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[application["args"]["model_repository"]]["readOnly"] is True
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["serve"] == config["http_options"]["port"]
