"""Strict offline checks of the manifests under deploy/: core kinds through kubernetes-validate's
bundled strict schemas; KServe's kinds (no schema of theirs on PyPI) through a JSON Schema of our
own, written from KServe's Go types (pkg/apis/serving/v1alpha1/servingruntime_types.go,
v1beta1 predictor/component types) for the fields these manifests use, with every container,
volume, port, env entry and resource block a $ref to the strict core Kubernetes definitions.
Unknown keys are errors everywhere (additionalProperties: false)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

K8S_VERSION = "1.32.0"  # the kubectl client on the CI image
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."


def core(name: str) -> dict:
    """A $ref to a strict core definition, e.g. core("api.core.v1.Container")."""
    return {"$ref": _DEFS + name}


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = _strict({"name": {"type": "string", "minLength": 1}, "namespace": {"type": "string"},
                    "labels": STRING_MAP, "annotations": STRING_MAP}, ("name",))

SERVING_RUNTIME_SPEC = _strict({
    "supportedModelFormats": {"type": "array", "items": _strict({
        "name": {"type": "string", "minLength": 1},
        "version": {"type": "string"},
        "autoSelect": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1},
    }, ("name",))},
    "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
    "multiModel": {"type": "boolean"},
    "disabled": {"type": "boolean"},
    "annotations": STRING_MAP,
    "labels": STRING_MAP,
    "containers": {"type": "array", "minItems": 1, "items": core("api.core.v1.Container")},
    "volumes": {"type": "array", "items": core("api.core.v1.Volume")},
    "nodeSelector": STRING_MAP,
    "affinity": core("api.core.v1.Affinity"),
    "tolerations": {"type": "array", "items": core("api.core.v1.Toleration")},
    "imagePullSecrets": {"type": "array", "items": core("api.core.v1.LocalObjectReference")},
    "storageHelper": _strict({"disabled": {"type": "boolean"}}),
}, ("containers",))


def _runtime(kind: str) -> dict:
    return _strict({"apiVersion": {"const": "serving.kserve.io/v1alpha1"}, "kind": {"const": kind},
                    "metadata": METADATA, "spec": SERVING_RUNTIME_SPEC}, ("apiVersion", "kind", "metadata", "spec"))


EXTERNAL_METRIC = _strict({
    "type": {"enum": ["Resource", "External", "PodMetric"]},
    "external": _strict({
        "metric": _strict({"backend": {"enum": ["prometheus", "graphite", "opentelemetry"]},
                           "serverAddress": {"type": "string"}, "query": {"type": "string"},
                           "namespace": {"type": "string"}}, ("backend", "query")),
        "target": _strict({"type": {"enum": ["Utilization", "Value", "AverageValue"]},
                           "value": {"type": "string"}, "averageValue": {"type": "string"},
                           "averageUtilization": {"type": "integer"}}, ("type",)),
    }, ("metric", "target")),
    "resource": _strict({"name": {"enum": ["cpu", "memory"]},
                         "target": _strict({"type": {"enum": ["Utilization", "AverageValue"]},
                                            "averageUtilization": {"type": "integer"},
                                            "averageValue": {"type": "string"}}, ("type",))}, ("name", "target")),
}, ("type",))

MODEL_SPEC = _strict({
    "modelFormat": _strict({"name": {"type": "string", "minLength": 1}, "version": {"type": "string"}}, ("name",)),
    "runtime": {"type": "string"},
    "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
    "storageUri": {"type": "string", "pattern": "^(gs|s3|pvc|oci|https?|hdfs|webhdfs|azureblob)://"},
    "resources": core("api.core.v1.ResourceRequirements"),
    "ports": {"type": "array", "items": core("api.core.v1.ContainerPort")},
    "env": {"type": "array", "items": core("api.core.v1.EnvVar")},
    "args": {"type": "array", "items": {"type": "string"}},
}, ("modelFormat", "storageUri"))

INFERENCE_SERVICE = _strict({
    "apiVersion": {"const": "serving.kserve.io/v1beta1"},
    "kind": {"const": "InferenceService"},
    "metadata": METADATA,
    "spec": _strict({"predictor": _strict({
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "scaleTarget": {"type": "integer", "minimum": 1},
        "containerConcurrency": {"type": "integer", "minimum": 0},
        "timeout": {"type": "integer", "minimum": 1},
        "serviceAccountName": {"type": "string"},
        "autoScaling": _strict({"metrics": {"type": "array", "items": EXTERNAL_METRIC}}),
        "model": MODEL_SPEC,
    }, ("model",))}, ("predictor",)),
}, ("apiVersion", "kind", "metadata", "spec"))

KUSTOMIZATION = _strict({
    "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
    "kind": {"const": "Kustomization"},
    "resources": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "images": {"type": "array", "items": _strict({"name": {"type": "string"}, "newName": {"type": "string"},
                                                  "newTag": {"type": "string"}, "digest": {"type": "string"}},
                                                 ("name",))},
}, ("apiVersion", "kind", "resources"))

# Ray Serve's config file (`serve deploy` / `serve run FILE`, and a RayService's serveConfigV2), from
# ray.serve.schema (ServeDeploySchema, ServeApplicationSchema, DeploymentSchema, HTTPOptionsSchema):
# Ray's pydantic models accept unknown keys at several levels, so our schema is the strict check
# and Ray's models (when ray is installed) check the values. An application's `args` go to its app
# builder, which refuses unknown ones (triserve.integrations.ray's settings_from_args).
ANY_OBJECT = {"type": "object"}
DEPLOYMENT_OPTIONS = _strict({
    "name": {"type": "string"}, "num_replicas": {"anyOf": [{"type": "integer", "minimum": 0}, {"const": "auto"}]},
    "max_ongoing_requests": {"type": "integer", "minimum": 1}, "max_queued_requests": {"type": "integer"},
    "user_config": ANY_OBJECT, "autoscaling_config": ANY_OBJECT, "graceful_shutdown_wait_loop_s": {"type": "number"},
    "graceful_shutdown_timeout_s": {"type": "number"}, "health_check_period_s": {"type": "number"},
    "health_check_timeout_s": {"type": "number"}, "ray_actor_options": ANY_OBJECT, "placement_group_bundles": {"type": "array"},
    "placement_group_strategy": {"type": "string"}, "max_replicas_per_node": {"type": "integer", "minimum": 1},
    "logging_config": ANY_OBJECT,
}, ("name",))
SERVE_CONFIG = _strict({
    "proxy_location": {"enum": ["Disabled", "HeadOnly", "EveryNode"]},
    "http_options": _strict({"host": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                             "root_path": {"type": "string"}, "request_timeout_s": {"type": "number"},
                             "keep_alive_timeout_s": {"type": "number"}}),
    "grpc_options": _strict({"port": {"type": "integer", "minimum": 1, "maximum": 65535},
                             "grpc_servicer_functions": {"type": "array", "items": {"type": "string"}},
                             "request_timeout_s": {"type": "number"}}),
    "logging_config": _strict({"encoding": {"enum": ["TEXT", "JSON"]}, "log_level": {"type": "string"},
                               "logs_dir": {"type": "string"}, "enable_access_log": {"type": "boolean"},
                               "additional_log_standard_attrs": {"type": "array", "items": {"type": "string"}}}),
    "applications": {"type": "array", "minItems": 1, "items": _strict({
        "name": {"type": "string", "minLength": 1}, "route_prefix": {"type": ["string", "null"]},
        "import_path": {"type": "string", "pattern": "^[A-Za-z_][\\w.]*:[A-Za-z_]\\w*$"},
        "runtime_env": ANY_OBJECT, "args": ANY_OBJECT, "external_scaler_enabled": {"type": "boolean"},
        "deployments": {"type": "array", "items": DEPLOYMENT_OPTIONS}, "logging_config": ANY_OBJECT,
    }, ("import_path",))},
}, ("applications",))

# KubeRay's RayService (ray.io/v1), the fields a triserve RayService uses; pods are core PodTemplateSpecs.
_GROUP = {"rayStartParams": STRING_MAP, "template": core("api.core.v1.PodTemplateSpec"),
          "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}}
RAY_SERVICE = _strict({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayService"}, "metadata": METADATA,
    "spec": _strict({
        "serveConfigV2": {"type": "string"},
        "serviceUnhealthySecondThreshold": {"type": "integer"}, "deploymentUnhealthySecondThreshold": {"type": "integer"},
        "upgradeStrategy": _strict({"type": {"enum": ["NewCluster", "None", "NewClusterWithIncrementalUpgrade"]}}),
        "rayClusterConfig": _strict({
            "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
            "autoscalerOptions": ANY_OBJECT,
            "headGroupSpec": _strict(_GROUP, ("template",)),
            "workerGroupSpecs": {"type": "array", "items": _strict({
                **_GROUP, "groupName": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0},
                "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
            }, ("groupName", "template"))},
        }, ("headGroupSpec",)),
    }, ("serveConfigV2", "rayClusterConfig")),
}, ("apiVersion", "kind", "metadata", "spec"))

OWN_SCHEMAS = {
    "ServeConfig": SERVE_CONFIG,
    "RayService": RAY_SERVICE,
    "ClusterServingRuntime": _runtime("ClusterServingRuntime"),
    "ServingRuntime": _runtime("ServingRuntime"),
    "InferenceService": INFERENCE_SERVICE,
    "Kustomization": KUSTOMIZATION,
}


def _registry() -> Registry:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    definitions = json.loads((root / "_definitions.json").read_text())
    return Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))


_REGISTRY = _registry()


def errors(doc: Any) -> list[str]:
    """Every schema error of one manifest document (empty: valid)."""
    if isinstance(doc, dict) and "kind" not in doc and "apiVersion" not in doc and "applications" in doc:
        return serve_config_errors(doc)
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        return ["not a Kubernetes object (no kind or apiVersion)"]
    if doc["kind"] == "RayService" and isinstance(doc.get("spec", {}).get("serveConfigV2"), str):
        embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
        found = [f"spec.serveConfigV2: {e}" for e in serve_config_errors(embedded)]
        return found + _own_errors(doc, RAY_SERVICE)
    schema = OWN_SCHEMAS.get(doc["kind"])
    if schema is None:  # a core kind: kubernetes-validate's strict schema, or an error if it has none
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(map(str, e.path))}: {e.message}"]
        except kubernetes_validate.SchemaNotFoundError as e:
            return [e.message]
        return []
    return _own_errors(doc, schema)


def _own_errors(doc: Any, schema: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema, registry=_REGISTRY)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def serve_config_errors(doc: Any) -> list[str]:
    """A Ray Serve config file: our strict schema, Ray's own models for the values (if ray is
    installed), and each triserve application's args through its app builder's own check."""
    found = _own_errors(doc, SERVE_CONFIG)
    if found:
        return found
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        ServeDeploySchema = None
    if ServeDeploySchema is not None:
        try:
            ServeDeploySchema.parse_obj(doc)
        except Exception as e:  # pydantic's ValidationError
            return [f"ray.serve.schema: {e}"]
    for app in doc["applications"]:
        if app["import_path"].startswith("triserve.integrations.ray"):
            try:
                from triserve.integrations.ray.deployments import settings_from_args
            except ImportError:  # the ray extra is not installed: the schemas above are the check
                continue
            try:
                settings_from_args(dict(app.get("args") or {}))
            except ValueError as e:
                found.append(f"applications.{app.get('name')}.args: {e}")
    return found


def manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
