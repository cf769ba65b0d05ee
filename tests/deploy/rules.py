"""KServe's rules for a runtime that a schema cannot express (KServe's Go code and the Knative
runtime contract): the container KServe merges the predictor into is named kserve-container;
Knative serves one port, named h2c for gRPC; probes are HTTP, TCP or gRPC on that port; the
model folder /mnt/models stays read-only; the container runs as non-root; the image is the
placeholder kustomize rewrites; formats are never auto-selected away from other runtimes."""

from __future__ import annotations

from typing import Any

PLACEHOLDER = "triserve:replace"
MODELS = "/mnt/models"


def _probe_port(probe: dict) -> Any:
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            return probe[kind].get("port")
    return "exec"  # Knative rewrites readiness for HTTP/TCP/gRPC only


def violations(doc: dict) -> list[str]:
    """What breaks KServe's rules in one ServingRuntime/ClusterServingRuntime (empty: none)."""
    found: list[str] = []
    spec = doc.get("spec", {})
    containers = spec.get("containers", [])
    if not containers or containers[0].get("name") != "kserve-container":
        found.append("the first container must be named kserve-container")
        return found
    container = containers[0]
    ports = container.get("ports", [])
    if len(ports) != 1:
        found.append(f"exactly one serving port (Knative exposes one), not {len(ports)}")
    port = ports[0] if ports else {}
    grpc = any(v.startswith("grpc-") for v in spec.get("protocolVersions", []))
    if grpc and port.get("name") != "h2c":
        found.append("a gRPC runtime's port must be named h2c")
    if not grpc and port.get("name") == "h2c":
        found.append("an HTTP runtime's port must not be named h2c")
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if kind in container and _probe_port(container[kind]) not in (None, port.get("containerPort")):
            found.append(f"{kind} must probe the serving port {port.get('containerPort')} (HTTP, TCP or gRPC)")
    for mount in container.get("volumeMounts", []):
        path = mount.get("mountPath", "").rstrip("/")
        if (path == MODELS or path.startswith(MODELS + "/") or MODELS.startswith(path + "/")) and not mount.get("readOnly"):
            found.append(f"{mount.get('mountPath')} would make {MODELS} writable")
    if not any(a == f"--model-repository={MODELS}" for a in container.get("args", [])):
        found.append(f"the server must read its models from {MODELS}")
    security = container.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        found.append("runAsNonRoot must be true")
    if security.get("allowPrivilegeEscalation") is not False:
        found.append("allowPrivilegeEscalation must be false")
    if container.get("image") != PLACEHOLDER:
        found.append(f"the image must be the placeholder {PLACEHOLDER} (kustomization.yaml sets it)")
    if any(f.get("autoSelect") for f in spec.get("supportedModelFormats", [])):
        found.append("autoSelect must be false (formats other runtimes claim are chosen by name)")
    annotations = spec.get("annotations", {})
    if annotations.get("prometheus.kserve.io/port") is None or annotations.get("prometheus.kserve.io/path") is None:
        found.append("the prometheus.kserve.io/port and /path annotations must be set")
    return found
