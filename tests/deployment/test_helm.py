"""The Helm chart, offline: lint, render under every feature switch, validate each manifest against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict), and check that values reach the manifests."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from helm_python import _native as helm_native

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "qwen3-embedding"
RELEASE = "emb"
NAMESPACE = "ml"
FULLNAME = f"{RELEASE}-qwen3-embedding"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
# Custom resources have no schema in kubernetes-validate (it ships only the built-in API): these kinds are
# not schema-validated; test_service_monitor asserts their fields instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}
PRESETS_DIR = CHART_DIR / "presets"
RWX = {"modelRepository": {"persistence": {"accessModes": ["ReadWriteMany"]}}}


def preset(size: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PRESETS_DIR / f"{size}.yaml").read_text())
    return loaded


EXTERNAL_URL = "triton.inference.svc.cluster.local:8001"

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "triton": {"resources": {"limits": {"nvidia.com/gpu": 2, "memory": "40Gi"}}},
    },
    "cpu-only": {"triton": {"resources": {"limits": {"nvidia.com/gpu": None}}}, "tolerations": []},
    "autoscaling-cpu": {**RWX, "autoscaling": {"enabled": True, "metric": "cpu", "maxReplicas": 6}},
    "autoscaling-keda": {**RWX, "autoscaling": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}},
    "autoscaling-pods": {
        **RWX,
        "autoscaling": {
            "enabled": True,
            "metric": "pods",
            "pods": {"metricName": "triton_queue_us_per_request", "targetAverageValue": "20000"},
        },
    },
    "external-triton": {"triton": {"external": {"enabled": True, "url": EXTERNAL_URL}}},
    "auth-keys": {"auth": {"enabled": True, "keys": ["key-one", "key-two"]}},
    "auth-existing-secret": {"auth": {"enabled": True, "existingSecret": "my-keys", "secretKey": "keys.txt"}},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "export-job": {
        "exportJob": {
            "enabled": True,
            "model": "Qwen/Qwen3-Embedding-4B",
            "hfTokenSecret": {"name": "hf-token", "key": "token"},
            "resources": {"limits": {"memory": "32Gi"}},
        }
    },
    "existing-claim": {
        "modelRepository": {"existingClaim": "qwen3-models", "subPath": ""},
        "exportJob": {"enabled": False},
    },
    "tls": {"facade": {"tls": {"enabled": True, "secretName": "facade-tls"}}},
    "mtls-auth-monitor": {
        "facade": {"tls": {"enabled": True, "secretName": "facade-tls", "clientAuth": True}},
        "auth": {"enabled": True, "keys": ["k"]},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {
            "apiFrom": [{"podSelector": {"matchLabels": {"role": "client"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
    },
    "no-metrics-port": {"facade": {"metricsPort": 0}},
    "everything": {
        **RWX,
        "autoscaling": {"enabled": True, "metric": "pods"},
        "auth": {"enabled": True, "keys": ["k"]},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "exportJob": {"enabled": True},
        "podDisruptionBudget": {"maxUnavailable": None, "minAvailable": 1},
        "service": {"headless": {"enabled": False}},
        "imagePullSecrets": [{"name": "regcred"}],
        "runtimeClassName": "nvidia",
        "facade": {
            "logFormat": "json",
            "settings": {"token_budget": 32768, "buckets": [64, 256, 1024]},
            "priority": {"bulkCallsInFlight": 2},
            "tracing": {"enabled": True, "otlpEndpoint": "http://otel-collector:4317"},
            "embeddingCacheBytes": 268435456,
        },
        "ingress": {"enabled": True, "tlsSecretName": "emb-tls"},
        "grpcRoute": {"enabled": True, "parentRefs": [{"name": "gw", "namespace": "gateways"}]},
        "triton": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
    },
    "preset-0.6b": preset("0.6b"),
    "preset-4b": preset("4b"),
    "preset-4b-gpu-export": {**preset("4b"), "exportJob": {**preset("4b")["exportJob"], "device": "gpu"}},
    "preset-8b": preset("8b"),
    "preset-8b-cpu-export": {
        **preset("8b"),
        "exportJob": {**preset("8b")["exportJob"], "device": "cpu", "precision": "fp16"},
    },
    "preset-4b-int4-16gb": preset("4b-int4-16gb"),
    "preset-8b-int4-24gb": preset("8b-int4-24gb"),
    # Quantized exports: the default model in int4 gptq with blocks of 128, a reranker in int8 rtn, blocks of 32.
    "quantized": {
        "exportJob": {"precision": "int4", "quantMethod": "gptq", "quantBlockSize": 128},
        "extraModels": [
            {"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-0.6B", "precision": "int8",
                                                  "quantMethod": "rtn", "quantBlockSize": 32}},
        ],
    },
    "tensorrt-cache": {"exportJob": {"accelerator": "tensorrt"}},
    # The OpenAI HTTP API through an Ingress and a Gateway API HTTPRoute.
    "http-ingress": {
        "httpIngress": {"enabled": True, "tlsSecretName": "api-tls"},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw", "namespace": "gateways"}]},
        "facade": {"tls": {"enabled": True, "secretName": "facade-tls"}},
    },
    # Hook mode renders only for a CPU export on a ReadWriteMany claim (stated: helm template cannot look it up).
    "hook-export": {
        "modelRepository": {"existingClaim": "qwen3-models"},
        "clusterState": {"modelClaim": {"accessModes": ["ReadWriteMany"]}},
        "exportJob": {"helmHook": True},
    },
    "multi-replica-rwx": {**RWX, "replicaCount": 3},
    # The default embedding model, a reranker and a second embedding size behind one Triton and one facade.
    "several-models": {
        "extraModels": [
            {"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-0.6B", "maxTokens": 4096}},
            {
                "name": "qwen3_embedding_4b",
                "export": {"model": "Qwen/Qwen3-Embedding-4B", "maxBatchSize": 8, "extraArgs": ["--instances", "1"]},
            },
        ],
        "rerankModel": "qwen3_reranker",
        "exportJob": {"resources": {"limits": {"memory": "32Gi"}}},
    },
}


@dataclass(frozen=True)
class Manifest:
    template: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])


@cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


# The optional kinds' APIs, as a cluster with the Prometheus Operator, KEDA and the Gateway API serves them
# (`helm template --api-versions ...`); the chart refuses a kind whose API is not served.
CRD_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "keda.sh/v1alpha1/ScaledObject",
    "gateway.networking.k8s.io/v1/GRPCRoute",
    "gateway.networking.k8s.io/v1/HTTPRoute",
)


def render_raw(
    values: dict[str, Any],
    api_versions: tuple[str, ...] = CRD_APIS,
    chart: helm_python.Chart | None = None,
    **options: Any,
) -> dict[str, str]:
    """Chart.render with the API versions the cluster serves (helm-python-sdk's native render takes them; its
    Python wrapper does not pass them on). `chart`: another loaded chart than this one (held by the caller while
    rendering: its native handle is freed with it). `options`: revision, is_install, is_upgrade."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions), **options}
    payload = json.dumps(copy.deepcopy(values))
    rendered = helm_native.call_string("helm_render", (chart or _chart())._raw(), payload, json.dumps(opts))
    out: dict[str, str] = json.loads(rendered)
    return out


def render(values: dict[str, Any]) -> list[Manifest]:
    out: list[Manifest] = []
    for template, text in render_raw(values).items():
        if not template.endswith(".yaml"):
            continue
        out.extend(Manifest(template, doc) for doc in yaml.safe_load_all(text) if doc)
    return out


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m.doc for m in manifests if m.kind == kind and (name is None or m.name == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(manifests: list[Manifest]) -> set[tuple[str, str]]:
    return {(m.kind, m.name) for m in manifests}


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in spec["containers"] if c["name"] == name]
    assert len(matches) == 1, f"no container {name}: {[c['name'] for c in spec['containers']]}"
    return matches[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    for m in manifests:
        if m.kind == "Pod":
            yield m.name, m.doc["spec"]
        elif m.kind in {"Deployment", "Job"}:
            yield m.name, m.doc["spec"]["template"]["spec"]


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------------------------- lint, schema


def test_chart_metadata() -> None:
    meta = _chart().metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "qwen3-embedding"
    assert (CHART_DIR / "values.schema.json").is_file()
    assert _chart().schema is not None


@pytest.mark.parametrize(
    "scenario",
    [
        "default",
        "export-job",
        "external-triton",
        "everything",
        "mtls-auth-monitor",
        "preset-0.6b",
        "preset-4b",
        "preset-8b",
        "hook-export",
        "autoscaling-keda",
        "several-models",
    ],
)
def test_lint_has_no_errors(scenario: str) -> None:
    report = helm_python.lint(
        CHART_DIR,
        copy.deepcopy(SCENARIOS[scenario]),
        namespace=NAMESPACE,
        strict=True,
        kube_version=f"v{KUBE_VERSIONS[0]}",
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert problems == []


def test_lint_fails_on_a_broken_values_file() -> None:
    report = helm_python.lint(CHART_DIR, {"exportJob": {"backend": "pytorch"}})
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"])


@pytest.mark.parametrize(
    "values",
    [
        {"exportJob": {"backend": "pytorch"}},
        {"exportJob": {"precision": "int2"}},
        {"autoscaling": {"metric": "memory"}},
        {"exportJob": {"device": "tpu"}},
        {"progressDeadlineSeconds": 10},
        {"model": {"version": "v1/../x"}},
        {"triton": {"external": {"enabled": True}}},
        {"triton": {"external": {"enabled": True, "url": "http://triton:8001"}}},
        {"facade": {"grpcPort": 70000}},
        {"facade": {"settings": {"Token-Budget": 1}}},
        {"triton": {"image": {"tag": 25.01}}},
        {"auth": {"keys": ["two words"]}},
        {"unknownTopLevelKey": True},
        # extraModels: a Triton name is one directory of the repository; every entry names its model.
        {"extraModels": [{"name": "models/qwen3_reranker"}]},
        {"extraModels": [{"name": ""}]},
        {"extraModels": [{"export": {"model": "Qwen/Qwen3-Reranker-0.6B"}}]},
        {"extraModels": [{"name": "qwen3_reranker", "servedName": "x", "export": {"model": "m"}}]},
        {"extraModels": [{"name": "qwen3_reranker", "export": {"precision": "fp16"}}]},
        {"extraModels": [{"name": "qwen3_reranker", "export": {"model": "m", "precision": "int3"}}]},
        {"exportJob": {"precision": "int4", "quantMethod": "awq"}},
        {"exportJob": {"precision": "int4", "quantBlockSize": 48}},
        {"exportJob": {"precision": "int4", "quantActivations": "bf16"}},
        {"extraModels": [{"name": "qwen3_reranker", "export": {"model": "m", "quantActivations": "int8"}}]},
        {"extraModels": [{"name": "qwen3_reranker", "export": {"model": "m", "quantBlockSize": "32"}}]},
        {"extraModels": [{"name": "qwen3_reranker", "export": {"model": "m", "device": "gpu"}}]},
        {"extraModels": [{"name": "qwen3_reranker", "export": {"model": "m", "maxTokens": "4096"}}]},
        {"extraModels": {"name": "qwen3_reranker"}},
        {"rerankModel": "../qwen3_reranker"},
        {"facade": {"workers": -1}},
        {"facade": {"workers": "2"}},
        # The typed facade settings: their types and the facade's own ranges.
        {"facade": {"priority": {"classes": "false"}}},
        {"facade": {"priority": {"bulkCallsInFlight": 0}}},
        {"facade": {"priority": {"bulkCallsInFlight": 1.5}}},
        {"facade": {"priority": {"bulkTokenBudget": 8}}},
        {"facade": {"priority": {"bulkWindowSeconds": -1}}},
        {"facade": {"priority": {"bulkWindowS": 2}}},
        {"facade": {"tracing": {"enabled": "yes"}}},
        {"facade": {"tracing": {"otlpEndpoint": "otel-collector:4317"}}},
        {"facade": {"tracing": {"queueSpans": 0}}},
        {"facade": {"tracing": {"exportTimeoutSeconds": 0}}},
        {"facade": {"embeddingCacheBytes": -1}},
        {"facade": {"embeddingCacheBytes": "256Mi"}},
        {"facade": {"embeddingCacheBytes": 1.5}},
    ],
    ids=lambda v: str(v)[:60],
)
def test_values_schema_rejects(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="schema"):
        render_raw(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": {"enabled": True}}, "auth.existingSecret or auth.keys"),
        # Guards: no model source, RWO with > 1 replica, bf16 on CPU, a hook without an existing claim.
        ({"exportJob": {"enabled": False}}, "no model source"),
        ({"replicaCount": 2}, "replicas > 1 (replicaCount or autoscaling.maxReplicas) with a ReadWriteOnce"),
        (
            {"autoscaling": {"enabled": True, "maxReplicas": 3, "keda": {"prometheusScrapesFacade": True}}},
            "with a ReadWriteOnce model volume",
        ),
        (
            {"replicaCount": 2, "modelRepository": {"persistence": {"accessModes": ["ReadWriteOncePod"]}}},
            "with a ReadWriteOncePod model volume",
        ),
        ({"exportJob": {"precision": "bf16"}}, "bf16 needs exportJob.device=gpu"),
        # MatMulNBits is ONNX Runtime's; a quantized CPU export builds the fp32 graph first (twice fp16's memory).
        (
            {"exportJob": {"precision": "int4", "backend": "tensorrt"}},
            "exportJob.precision int4 needs backend onnxruntime or python",
        ),
        (
            {"exportJob": {"model": "Qwen/Qwen3-Embedding-4B", "precision": "int4",
                           "resources": {"limits": {"memory": "32Gi"}}}},
            "a CPU export of Qwen/Qwen3-Embedding-4B needs resources.limits.memory >= 40Gi",
        ),
        (
            {"exportJob": {"model": "Qwen/Qwen3-Embedding-8B", "precision": "int8",
                           "resources": {"limits": {"memory": "64Gi"}}}},
            "a CPU export of Qwen/Qwen3-Embedding-8B needs resources.limits.memory >= 72Gi",
        ),
        # The 32Gi the chart once defaulted to cannot export 8B on CPU (>= 48 GiB, docs/export.md).
        (
            {"exportJob": {"model": "Qwen/Qwen3-Embedding-8B", "resources": {"limits": {"memory": "32Gi"}}}},
            "a CPU export of Qwen/Qwen3-Embedding-8B needs resources.limits.memory >= 48Gi",
        ),
        ({"exportJob": {"model": "Qwen/Qwen3-Embedding-4B"}}, "needs resources.limits.memory >= 24Gi"),
        ({"exportJob": {"helmHook": True}}, "exportJob.helmHook needs modelRepository.existingClaim"),
        ({"grpcRoute": {"enabled": True}}, "grpcRoute.parentRefs"),
        (
            {"facade": {"metricsPort": 0}, "auth": {"enabled": True, "keys": ["k"]}},
            "metrics.service with auth or facade.tls needs facade.metricsPort",
        ),
        ({"exportJob": {"enabled": True}, "modelRepository": {"subPath": ""}}, "subPath"),
        ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "not both"),
        (
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "metrics.service",
        ),
        ({"facade": {"tls": {"enabled": True}}}, "facade.tls.secretName"),
        ({"facade": {"tls": {"clientAuth": True}}}, "needs facade.tls.enabled"),
        # Probes the kubelet cannot run against a TLS facade.
        (
            {
                "facade": {"metricsPort": 0, "tls": {"enabled": True, "secretName": "t"}},
                "metrics": {"service": {"enabled": False}},
            },
            "gRPC probes cannot speak TLS",
        ),
        (
            {
                "facade": {
                    "tls": {"enabled": True, "secretName": "t", "clientAuth": True},
                    "readinessProbe": {"httpGet": {"path": "/health/ready", "port": "http", "scheme": "HTTPS"}},
                }
            },
            "client certificate the kubelet cannot send",
        ),
        # A scrape that sends no key and speaks plaintext cannot read /metrics on the API port.
        (
            {
                "facade": {"metricsPort": 0},
                "auth": {"enabled": True, "keys": ["k"]},
                "metrics": {"serviceMonitor": {"enabled": True}},
            },
            "needs facade.metricsPort",
        ),
        # Several models: one name per model, a default reranker that is served, each export checked.
        ({"extraModels": [{"name": "qwen3_embedding"}]}, 'extraModels[0].name "qwen3_embedding" is already served'),
        (
            {"extraModels": [{"name": "qwen3_reranker"}, {"name": "qwen3_reranker"}]},
            'extraModels[1].name "qwen3_reranker" is already served',
        ),
        (
            {
                "extraModels": [
                    {"name": "qwen3_r", "export": {"model": "a"}},
                    {"name": "Qwen3-R", "export": {"model": "b"}},
                ]
            },
            'gives the export container name "export-qwen3-r" of another model',
        ),
        ({"rerankModel": "qwen3_reranker"}, 'rerankModel "qwen3_reranker" is not a served model'),
        (
            {
                "extraModels": [
                    {"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-0.6B", "precision": "bf16"}}
                ]
            },
            "extraModels qwen3_reranker: export.precision bf16 needs exportJob.device=gpu",
        ),
        (
            {
                "extraModels": [{"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-8B"}}],
                "exportJob": {"resources": {"limits": {"memory": "32Gi"}}},
            },
            "a CPU export of Qwen/Qwen3-Reranker-8B needs resources.limits.memory >= 48Gi",
        ),
        # The 4B preset's Triton holds one 4B model; with a 4B reranker the weights alone are 15 GiB.
        (
            {
                **preset("4b"),
                "extraModels": [{"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-4B"}}],
            },
            "triton.resources.limits.memory 16Gi is below what loading the 2 models needs",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render_raw(values)


# ------------------------------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_manifest_validates_strictly(scenario: str) -> None:
    manifests = render(SCENARIOS[scenario])
    assert manifests
    validated = 0
    for m in manifests:
        assert m.doc["metadata"].get("namespace") == NAMESPACE, m.name
        if (m.doc["apiVersion"], m.kind) in CRD_KINDS:
            continue  # no schema shipped for CRDs; see test_service_monitor
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(m.doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{m.template}: {m.kind}/{m.name} invalid for {version} at {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{m.template}: {exc.message}")
        validated += 1
    assert validated >= 6


def test_validation_catches_a_broken_manifest() -> None:
    """The validator really is strict: an unknown field in a rendered Deployment is rejected."""
    deployment = copy.deepcopy(only(render({}), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_default_objects() -> None:
    manifests = render({})
    got = kinds(manifests)
    assert got == {
        ("Deployment", FULLNAME),
        ("Service", FULLNAME),
        ("Service", f"{FULLNAME}-headless"),
        ("Service", f"{FULLNAME}-metrics"),
        ("ServiceAccount", FULLNAME),
        ("PersistentVolumeClaim", f"{FULLNAME}-models"),
        ("Job", only(manifests, "Job")["metadata"]["name"]),
        ("PodDisruptionBudget", FULLNAME),
        ("NetworkPolicy", FULLNAME),
        ("Pod", f"{FULLNAME}-test-grpc"),
    }


# ------------------------------------------------------------------------------------------------ the pod


def test_default_pod_runs_triton_and_the_facade() -> None:
    spec = pod_spec(render({}))
    assert [c["name"] for c in spec["containers"]] == ["triton", "facade"]
    triton = container(spec, "triton")
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:25.01-py3"
    assert triton["args"][0] == "tritonserver"
    assert "--model-repository=/models" in triton["args"]
    assert "--load-model=qwen3_embedding" in triton["args"]
    # gRPC and HTTP on the pod's loopback only: no container port for them; metrics for Prometheus.
    assert {p["containerPort"] for p in triton["ports"]} == {8002}
    assert "--grpc-address=127.0.0.1" in triton["args"] and "--http-address=127.0.0.1" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]

    facade = container(spec, "facade")
    env = env_of(facade)
    assert env["QWEN3_EMBED_TRITON_URL"] == "127.0.0.1:8001"
    assert env["QWEN3_EMBED_MODEL_REPOSITORY"] == "/models"
    assert env["QWEN3_EMBED_MODEL_NAME"] == "qwen3_embedding"
    assert env["QWEN3_EMBED_GRPC_PORT"] == "50051"
    assert env["QWEN3_EMBED_HTTP_PORT"] == "8080"
    assert env["QWEN3_EMBED_METRICS_PORT"] == "9090"
    assert {p["name"]: p["containerPort"] for p in facade["ports"]} == {"grpc": 50051, "http": 8080, "metrics": 9090}


def test_both_containers_mount_the_model_repository_read_only() -> None:
    spec = pod_spec(render({}))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-models"
    for name in ("triton", "facade"):
        mounts = {m["name"]: m for m in container(spec, name)["volumeMounts"]}
        assert mounts["model-repository"]["mountPath"] == "/models"
        assert mounts["model-repository"]["readOnly"] is True
        assert mounts["model-repository"]["subPath"] == "models/v1"


def test_probes() -> None:
    spec = pod_spec(render({}))
    triton = container(spec, "triton")
    # Triton's HTTP listens on loopback: its probes ask it from inside the container (test_triton_probe_runs).
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        script = triton[probe]["exec"]["command"][2]
        assert f"GET {path} HTTP/1.0" in script and "/dev/tcp/127.0.0.1/8000" in script
        assert "httpGet" not in triton[probe]
    startup = triton["startupProbe"]
    assert "GET /v2/health/ready " in startup["exec"]["command"][2]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model load budget

    facade = container(spec, "facade")
    # On the plaintext metrics port: the same probes whether the API speaks TLS, mTLS or neither.
    # Liveness and start-up watch the process; readiness follows Triton.
    for probe in ("startupProbe", "livenessProbe"):
        assert facade[probe]["httpGet"] == {"path": "/health/live", "port": "metrics"}
    assert facade["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "metrics"}

    # Without the metrics port: native gRPC health ("liveness" name for the process).
    facade = container(pod_spec(render(SCENARIOS["no-metrics-port"])), "facade")
    for probe in ("startupProbe", "livenessProbe"):
        assert facade[probe]["grpc"] == {"port": 50051, "service": "liveness"}
    assert facade["readinessProbe"]["grpc"] == {"port": 50051}
    # A probe with its own handler is kept as given.
    own = {"exec": {"command": ["true"]}, "periodSeconds": 7}
    kept = container(pod_spec(render({"facade": {"livenessProbe": own}})), "facade")["livenessProbe"]
    assert own.items() <= kept.items() and "httpGet" not in kept and "grpc" not in kept


def test_startup_probe_budget_is_configurable() -> None:
    spec = pod_spec(render({"triton": {"startupProbe": {"failureThreshold": 360}}}))
    startup = container(spec, "triton")["startupProbe"]
    assert startup["failureThreshold"] == 360
    assert "GET /v2/health/ready " in startup["exec"]["command"][2]  # the rest of the probe is kept


@pytest.mark.parametrize("drain", [0, 7.5, 10, 45, 120])
def test_grace_period_covers_the_drain(drain: float) -> None:
    spec = pod_spec(render({"facade": {"drainSeconds": drain}}))
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > drain
    assert grace >= drain + 10
    assert env_of(container(spec, "facade"))["QWEN3_EMBED_DRAIN_SECONDS"] == str(drain)
    # Triton keeps serving the draining facade and still has time to finish its own work.
    sleep = int(container(spec, "triton")["lifecycle"]["preStop"]["exec"]["command"][1])
    assert drain <= sleep < grace


def test_grace_period_covers_a_long_triton_exit_timeout() -> None:
    spec = pod_spec(render({"triton": {"exitTimeoutSeconds": 60}}))
    sleep = int(container(spec, "triton")["lifecycle"]["preStop"]["exec"]["command"][1])
    assert "--exit-timeout-secs=60" in container(spec, "triton")["args"]
    assert spec["terminationGracePeriodSeconds"] > sleep + 60


def test_security_contexts() -> None:
    manifests = render(SCENARIOS["everything"])
    specs = dict(pod_specs(manifests))
    assert len(specs) == 3  # Deployment, export Job, helm test Pod
    for name, spec in specs.items():
        assert spec["imagePullSecrets"] == [{"name": "regcred"}], name
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in all_containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if c["name"] in {"triton", "facade", "export"}:
                assert mounts.get("/tmp") in tmp_volumes, (name, c["name"])


def test_per_container_security_context_override_merges() -> None:
    spec = pod_spec(render({"triton": {"securityContext": {"readOnlyRootFilesystem": False}}}))
    triton = container(spec, "triton")["securityContext"]
    assert triton["readOnlyRootFilesystem"] is False
    assert triton["capabilities"]["drop"] == ["ALL"]
    assert container(spec, "facade")["securityContext"]["readOnlyRootFilesystem"] is True


def test_facade_env_names_are_settings_fields() -> None:
    spec = pod_spec(render(SCENARIOS["everything"]))
    names = [n for n in env_of(container(spec, "facade")) if n.startswith("QWEN3_EMBED_")]
    assert len(names) >= 8
    fields = set(Settings.model_fields)
    unknown = [n for n in names if n.removeprefix("QWEN3_EMBED_").lower() not in fields]
    assert unknown == []


@pytest.mark.parametrize(
    ("facade", "workers", "cpu_request"),
    [
        ({}, "2", "2"),  # the default: 2 worker processes, 2 CPUs requested
        ({"workers": 3}, "3", "3"),
        ({"workers": 1}, "1", "1"),
        ({"workers": 0}, "0", "4"),  # auto: one per CPU of the limit
        ({"workers": 0, "resources": {"limits": {"cpu": "1500m"}}}, "0", "1"),
        ({"workers": 0, "resources": {"limits": {"cpu": None}}}, "0", "1"),
        ({"workers": 4, "resources": {"requests": {"cpu": "500m"}}}, "4", "500m"),  # an explicit request wins
    ],
    ids=str,
)
def test_facade_workers_and_the_cpu_request_that_follows(
    facade: dict[str, Any], workers: str, cpu_request: str
) -> None:
    facade_container = container(pod_spec(render({"facade": facade})), "facade")
    assert env_of(facade_container)["QWEN3_EMBED_WORKERS"] == workers
    # Guaranteed QoS (qosGuaranteed): the CPU limit follows the request, the memory request the limit.
    assert facade_container["resources"]["requests"] == {"cpu": cpu_request, "memory": "2Gi"}
    assert facade_container["resources"]["limits"] == facade_container["resources"]["requests"]
    assert Settings.model_validate({"workers": workers}).workers == int(workers)


def test_facade_workers_beyond_the_cpu_limit_fail() -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape("facade.workers (5) is more than facade.resources")):
        render_raw({"facade": {"workers": 5}})
    with pytest.raises(helm_python.HelmError, match=re.escape("facade.workers (2) is more than")):
        render_raw({"facade": {"resources": {"limits": {"cpu": "1500m"}}}})


def test_facade_settings_map_becomes_env() -> None:
    values = {"facade": {"settings": {"token_budget": 67108864, "buckets": [64, 256], "health_poll_s": 2.5}}}
    env = env_of(container(pod_spec(render(values)), "facade"))
    assert env["QWEN3_EMBED_TOKEN_BUDGET"] == "67108864"
    assert env["QWEN3_EMBED_BUCKETS"] == "64,256"
    assert env["QWEN3_EMBED_HEALTH_POLL_S"] == "2.5"
    # What the facade makes of them.
    settings = Settings(**{k.removeprefix("QWEN3_EMBED_").lower(): v for k, v in env.items() if "BUCK" in k})
    assert settings.buckets == [64, 256]


# --------------------------------------------------------------------------------------------- wiring


def test_values_reach_the_manifests() -> None:
    values = {
        **RWX,
        "replicaCount": 3,
        "facade": {
            "image": {"repository": "registry.example.com/ml/facade", "tag": "1.2.3"},
            "grpcPort": 50099,
            "httpPort": 8099,
            "metricsPort": 9099,
            "maxInFlight": 200,
            "resources": {"requests": {"cpu": "3", "memory": "3Gi"}, "limits": {"cpu": "6", "memory": "5Gi"}},
        },
        "triton": {
            "image": {"repository": "registry.example.com/nvidia/tritonserver", "tag": "24.12"},
            "grpcPort": 9001,
            "httpPort": 9000,
            "metricsPort": 9002,
            "resources": {"requests": {"cpu": "6"}, "limits": {"memory": "48Gi", "nvidia.com/gpu": 4}},
        },
        "service": {"grpcPort": 443, "httpPort": 80},
        "model": {"name": "qwen3_embedding_8b"},
        "modelRepository": {"mountPath": "/srv/models"},
    }
    manifests = render(merged(values, RWX))
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    spec = deployment["spec"]["template"]["spec"]

    facade = container(spec, "facade")
    assert facade["image"] == "registry.example.com/ml/facade:1.2.3"
    assert {p["name"]: p["containerPort"] for p in facade["ports"]} == {"grpc": 50099, "http": 8099, "metrics": 9099}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert facade[probe]["httpGet"]["port"] == "metrics"
    assert facade["resources"] == {  # Guaranteed: the CPU request, the memory limit
        "requests": {"cpu": "3", "memory": "5Gi"},
        "limits": {"cpu": "3", "memory": "5Gi"},
    }
    env = env_of(facade)
    assert env["QWEN3_EMBED_GRPC_PORT"] == "50099"
    assert env["QWEN3_EMBED_HTTP_PORT"] == "8099"
    assert env["QWEN3_EMBED_MAX_IN_FLIGHT"] == "200"
    assert env["QWEN3_EMBED_TRITON_URL"] == "127.0.0.1:9001"
    assert env["QWEN3_EMBED_METRICS_PORT"] == "9099"
    assert env["QWEN3_EMBED_MODEL_REPOSITORY"] == "/srv/models"
    assert env["QWEN3_EMBED_MODEL_NAME"] == "qwen3_embedding_8b"

    triton = container(spec, "triton")
    assert triton["image"] == "registry.example.com/nvidia/tritonserver:24.12-py3"
    for arg in (
        "--grpc-port=9001",
        "--http-port=9000",
        "--metrics-port=9002",
        "--model-repository=/srv/models",
        "--load-model=qwen3_embedding_8b",
    ):
        assert arg in triton["args"]
    assert {p["containerPort"] for p in triton["ports"]} == {9002}
    assert triton["resources"]["requests"] == {"cpu": "6", "memory": "48Gi", "nvidia.com/gpu": 4}
    assert triton["resources"]["limits"] == triton["resources"]["requests"]

    service = only(manifests, "Service", FULLNAME)
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "grpc": (443, "grpc"),
        "http": (80, "http"),
    }
    metrics = only(manifests, "Service", f"{FULLNAME}-metrics")
    assert {p["name"]: p["port"] for p in metrics["spec"]["ports"]} == {
        "http-metrics": 9099,
        "triton-metrics": 9002,
    }
    notes = render_raw(merged(values, RWX))["qwen3-embedding/templates/NOTES.txt"]
    assert "localhost:443 list" in notes


def test_services_select_the_pod_and_target_its_named_ports() -> None:
    manifests = render(SCENARIOS["everything"])
    deployment = only(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for m in manifests:
        if m.kind == "Service":
            assert m.doc["spec"]["selector"].items() <= pod_labels.items(), m.name
            for port in m.doc["spec"]["ports"]:
                assert port["targetPort"] in port_names, (m.name, port)
    pdb = only(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    # The export Job's pod must not become a Service endpoint or count for the PDB.
    job_labels = only(manifests, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= job_labels.items()


def test_gpu_values() -> None:
    spec = pod_spec(render(SCENARIOS["gpu"]))
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container(spec, "triton")["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "40Gi", "cpu": "2"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert "nvidia.com/gpu" not in container(spec, "facade")["resources"].get("limits", {})


def test_cpu_only_values_drop_the_gpu() -> None:
    spec = pod_spec(render(SCENARIOS["cpu-only"]))
    assert "nvidia.com/gpu" not in container(spec, "triton")["resources"]["limits"]
    assert "tolerations" not in spec


@pytest.mark.parametrize("mode", ["autoscaling-cpu", "autoscaling-pods"])
def test_autoscaling_adds_an_hpa_and_removes_only_replicas(mode: str) -> None:
    base = render(RWX)
    scaled = render(SCENARIOS[mode])
    assert kinds(scaled) == kinds(base) | {("HorizontalPodAutoscaler", FULLNAME)}
    deployment, base_deployment = only(scaled, "Deployment"), only(base, "Deployment")
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["template"] == base_deployment["spec"]["template"]

    hpa = only(scaled, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    if mode == "autoscaling-cpu":
        assert hpa["spec"]["maxReplicas"] == 6
        assert metric["type"] == "Resource"
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
        # Utilisation is relative to requests: every container must request CPU.
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert c["resources"]["requests"]["cpu"], c["name"]
    else:
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "triton_queue_us_per_request"
        assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "20000"}


def test_autoscaling_pods_default_metric_is_in_flight_requests() -> None:
    hpa = only(render({**RWX, "autoscaling": {"enabled": True, "metric": "pods"}}), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "qwen3_embed_in_flight_requests"


def test_external_triton() -> None:
    manifests = render(SCENARIOS["external-triton"])
    spec = pod_spec(manifests)
    assert [c["name"] for c in spec["containers"]] == ["facade"]
    facade = container(spec, "facade")
    assert env_of(facade)["QWEN3_EMBED_TRITON_URL"] == EXTERNAL_URL
    assert not any("nvidia.com/gpu" in str(c.get("resources")) for c in spec["containers"])
    volume_names = {v["name"] for v in spec["volumes"]}
    assert "dshm" not in volume_names
    assert "model-repository" in volume_names  # the facade still reads the tokenizer
    metrics = only(manifests, "Service", f"{FULLNAME}-metrics")
    assert [p["name"] for p in metrics["spec"]["ports"]] == ["http-metrics"]
    monitor_values = merged(SCENARIOS["external-triton"], SCENARIOS["servicemonitor"])
    monitor = only(render(monitor_values), "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http-metrics"]


def test_existing_claim() -> None:
    manifests = render(SCENARIOS["existing-claim"])
    assert not any(m.kind == "PersistentVolumeClaim" for m in manifests)
    spec = pod_spec(manifests)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == "qwen3-models"
    mount = {m["name"]: m for m in container(spec, "facade")["volumeMounts"]}["model-repository"]
    assert mount["subPath"] == "v1"  # <version> at the volume root
    unversioned = merged(SCENARIOS["existing-claim"], {"model": {"version": ""}})
    mount = {m["name"]: m for m in container(pod_spec(render(unversioned)), "facade")["volumeMounts"]}
    assert "subPath" not in mount["model-repository"]


def test_chart_pvc_is_kept_and_sized_from_values() -> None:
    values = {
        "modelRepository": {"persistence": {"size": "80Gi", "storageClass": "fast", "accessModes": ["ReadWriteMany"]}}
    }
    pvc = only(render(values), "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "80Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@cache
def _export_help() -> str:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "export", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_export_job() -> None:
    manifests = render(SCENARIOS["export-job"])
    job = only(manifests, "Job")
    assert job["metadata"]["name"].startswith(f"{FULLNAME}-export-")
    assert len(job["metadata"]["name"]) <= 63
    job_spec = job["spec"]["template"]["spec"]
    assert job_spec["restartPolicy"] == "Never"
    [export] = job_spec["containers"]
    assert export["image"] == "ghcr.io/qwen3-embedding-service/export:0.1.0"
    args = export["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {
        "--model": "Qwen/Qwen3-Embedding-4B",
        "--output": "/workspace/models/v1",
        "--name": "qwen3_embedding",
        "--backend": "onnxruntime",
        "--precision": "fp16",
        "--max-batch-size": "16",
        "--max-tokens": "8192",
        "--accelerator": "none",
        "--device": "cpu",
    }
    # The image's entrypoint is replaced by a shell that skips a version already published, then execs
    # `qwen3-embed export` with these arguments.
    assert export["command"][:2] == ["/bin/sh", "-c"]
    assert 'exec qwen3-embed export "$@"' in export["command"][2]
    help_text = _export_help()
    for flag in pairs:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"export has no {flag}"
    env = env_of(export)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert env["HF_HOME"].startswith("/workspace/")

    # The Job writes the whole volume; the server reads its `models` directory at /models.
    claim = f"{FULLNAME}-models"
    job_volumes = {v["name"]: v for v in job_spec["volumes"]}
    assert job_volumes["workspace"]["persistentVolumeClaim"] == {"claimName": claim}
    job_mount = {m["name"]: m for m in export["volumeMounts"]}["workspace"]
    assert job_mount["mountPath"] == "/workspace"
    assert not job_mount.get("readOnly", False)
    spec = pod_spec(manifests)
    server_volumes = {v["name"]: v for v in spec["volumes"]}
    assert server_volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == claim
    [wait] = spec["initContainers"]
    assert "/models/qwen3_embedding/config.pbtxt" in " ".join(wait["command"])
    assert "exit 1" in wait["command"][2]  # bounded: fails with a message, does not wait forever
    # RWO volume: the export pod is placed next to a server pod.
    affinity = job_spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    server_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert affinity["labelSelector"]["matchLabels"].items() <= server_labels.items()
    assert affinity["topologyKey"] == "kubernetes.io/hostname"


def test_export_job_name_follows_its_configuration() -> None:
    def job_name(values: dict[str, Any]) -> str:
        return str(only(render(values), "Job")["metadata"]["name"])

    base = {"exportJob": {"enabled": True}}
    assert job_name(base) == job_name(copy.deepcopy(base))
    assert job_name(base) != job_name(merged(base, {"exportJob": {"precision": "fp32"}}))
    assert job_name(base) != job_name(merged(base, {"exportJob": {"model": "Qwen/Qwen3-Embedding-0.6B-x"}}))


def test_no_export_job_for_a_filled_volume_and_no_token_without_a_secret() -> None:
    filled = {"exportJob": {"enabled": False}, "modelRepository": {"prepopulated": True}}
    assert not any(m.kind == "Job" for m in render(filled))
    assert "initContainers" not in pod_spec(render(filled))
    job = only(render({"exportJob": {"enabled": True}}), "Job")
    assert "HF_TOKEN" not in env_of(job["spec"]["template"]["spec"]["containers"][0])


def test_auth_with_keys_in_values(tmp_path: Path) -> None:
    manifests = render(SCENARIOS["auth-keys"])
    secret = only(manifests, "Secret")
    keys = [ln for ln in secret["stringData"]["api-keys"].splitlines() if ln.strip()]
    assert keys == ["key-one", "key-two"]
    spec = pod_spec(manifests)
    facade = container(spec, "facade")
    mounts = {m["name"]: m for m in facade["volumeMounts"]}
    path = env_of(facade)["QWEN3_EMBED_API_KEYS_FILE"]
    assert path == f"{mounts['api-keys']['mountPath']}/api-keys"
    assert mounts["api-keys"]["readOnly"] is True
    volume = {v["name"]: v for v in spec["volumes"]}["api-keys"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert "checksum/api-keys" in only(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    # The facade reads the file the way the chart writes it.
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(secret["stringData"]["api-keys"])
    assert Settings(api_keys_file=keys_file).all_api_keys() == ["key-one", "key-two"]
    notes = render_raw(SCENARIOS["auth-keys"])["qwen3-embedding/templates/NOTES.txt"]
    assert "authorization: Bearer" in notes


def test_auth_with_an_existing_secret() -> None:
    manifests = render(SCENARIOS["auth-existing-secret"])
    assert not any(m.kind == "Secret" for m in manifests)
    spec = pod_spec(manifests)
    volume = {v["name"]: v for v in spec["volumes"]}["api-keys"]
    assert volume["secret"]["secretName"] == "my-keys"
    assert volume["secret"]["items"] == [{"key": "keys.txt", "path": "keys.txt"}]
    assert env_of(container(spec, "facade"))["QWEN3_EMBED_API_KEYS_FILE"].endswith("/keys.txt")


def test_no_auth_by_default() -> None:
    manifests = render({})
    assert not any(m.kind == "Secret" for m in manifests)
    assert "QWEN3_EMBED_API_KEYS_FILE" not in env_of(container(pod_spec(manifests), "facade"))


def test_service_monitor() -> None:
    # A CRD: not schema-validated above, so its shape is asserted here.
    manifests = render(SCENARIOS["servicemonitor"])
    monitor = only(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    metrics_service = only(manifests, "Service", f"{FULLNAME}-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    main_service = only(manifests, "Service", FULLNAME)
    assert not selector.items() <= main_service["metadata"]["labels"].items()  # scraped once, not twice
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    service_ports = {p["name"] for p in metrics_service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == ["http-metrics", "triton-metrics"]
    for endpoint in endpoints:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
    assert not any(m.kind == "ServiceMonitor" for m in render({}))


def test_helm_test_pod_checks_grpc_health() -> None:
    manifests = render(SCENARIOS["auth-keys"])
    pod = only(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [c] = pod["spec"]["containers"]
    script = " ".join(c.get("command", []) + c.get("args", []))
    service = only(manifests, "Service", FULLNAME)
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert f"{FULLNAME}.{NAMESPACE}.svc:{grpc_port}" in script
    assert "grpc.health.v1.Health/Check" in script
    assert '"SERVING"' in script
    assert "embedding.v1.EmbeddingService" in script
    assert "authorization: Bearer" in script  # GetInfo with a key when auth is on
    assert pod["spec"]["restartPolicy"] == "Never"


def test_notes_show_grpcurl_commands() -> None:
    notes = render_raw({})["qwen3-embedding/templates/NOTES.txt"]
    assert "grpcurl -plaintext localhost:50051 list" in notes
    assert "describe embedding.v1.EmbeddingService" in notes
    pattern = r"grpcurl[^\n]*\\\n\s*-d '(\{.*\})' \\\n\s*localhost:50051 embedding\.v1\.EmbeddingService/Embed"
    embed = re.search(pattern, notes)
    assert embed, notes
    request = yaml.safe_load(embed.group(1))  # JSON is YAML
    assert request["inputs"] and isinstance(request["inputs"], list)
    assert "authorization" not in notes


def test_readme_documents_both_model_sources() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    for needle in ("existingClaim", "exportJob.enabled", "hfTokenSecret", "triton.external.url", "helm test"):
        assert needle in readme, needle


# ------------------------------------------------------------------------------- exposure: TLS, metrics


@pytest.mark.parametrize("scenario", ["tls", "mtls-auth-monitor"])
def test_tls_deployments_can_be_probed_and_scraped(scenario: str) -> None:
    """TLS and mTLS: the facade gets the Secret's files; every probe and the metrics scrape use the plaintext
    metrics port (kubelet gRPC probes speak no TLS, HTTP probes carry no client certificate, the scrape
    sends no API key), and the facade's setting for that port is the port the probes use."""
    manifests = render(SCENARIOS[scenario])
    spec = pod_spec(manifests)
    facade = container(spec, "facade")
    env = env_of(facade)
    mounts = {m["name"]: m for m in facade["volumeMounts"]}
    assert env["QWEN3_EMBED_TLS_CERT"] == f"{mounts['tls']['mountPath']}/tls.crt"
    assert env["QWEN3_EMBED_TLS_KEY"] == f"{mounts['tls']['mountPath']}/tls.key"
    assert mounts["tls"]["readOnly"] is True
    assert {v["name"]: v for v in spec["volumes"]}["tls"]["secret"]["secretName"] == "facade-tls"
    mtls = scenario.startswith("mtls")
    assert (env.get("QWEN3_EMBED_TLS_CLIENT_CA") == f"{mounts['tls']['mountPath']}/ca.crt") is mtls
    ports = {p["name"]: p["containerPort"] for p in facade["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        handler = facade[probe]
        assert "grpc" not in handler and handler["httpGet"]["port"] == "metrics", probe
        assert handler["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert ports["metrics"] == int(env["QWEN3_EMBED_METRICS_PORT"])
    # What the facade makes of the environment: valid settings, metrics on their own listener.
    settings = Settings(
        **{
            k.removeprefix("QWEN3_EMBED_").lower(): v
            for k, v in env.items()
            if k.startswith("QWEN3_EMBED_") and "KEYS" not in k
        }
    )
    assert settings.metrics_port == ports["metrics"] and settings.tls_cert is not None
    metrics_service = only(manifests, "Service", f"{FULLNAME}-metrics")
    scrape = next(p for p in metrics_service["spec"]["ports"] if p["name"] == "http-metrics")
    assert scrape["targetPort"] == "metrics"
    if mtls:
        monitor = only(manifests, "ServiceMonitor")
        endpoint = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "http-metrics")
        assert endpoint["scheme"] == "http" and endpoint["path"] == "/metrics"
        # helm test presents a client certificate and an API key.
        [test] = only(manifests, "Pod")["spec"]["containers"]
        script = " ".join(test["command"])
        assert "-cert /tls/tls.crt -key /tls/tls.key" in script and "-plaintext" not in script
    else:
        script = " ".join(only(manifests, "Pod")["spec"]["containers"][0]["command"])
        assert "grpcurl -insecure" in script and "-plaintext" not in script


def test_network_policy_admits_only_the_api_and_metrics() -> None:
    """Triton has no auth or TLS: no other pod may reach it. Its gRPC port listens on the pod's loopback and
    is not even a container port; its HTTP port is in no ingress rule (the kubelet's probes come from the
    node); only the facade's API ports and the metrics ports are admitted."""
    for scenario in ("default", "mtls-auth-monitor"):
        manifests = render(SCENARIOS[scenario])
        policy = only(manifests, "NetworkPolicy")
        spec = pod_spec(manifests)
        pod_labels = only(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert admitted == {"grpc", "http", "metrics", "triton-metrics"}
        container_ports = {p["name"] for c in spec["containers"] for p in c["ports"]}
        assert admitted <= container_ports
        assert container_ports == admitted  # Triton's HTTP and gRPC are on loopback: no port of theirs to admit
        triton = container(spec, "triton")
        assert "--grpc-address=127.0.0.1" in triton["args"] and "--http-address=127.0.0.1" in triton["args"]
        assert "exec" in triton["startupProbe"]  # asked from inside the container
        if scenario == "default":
            assert all("from" not in rule for rule in policy["spec"]["ingress"])
        else:
            api, metrics = policy["spec"]["ingress"]
            assert api["from"] == SCENARIOS[scenario]["networkPolicy"]["apiFrom"]
            assert metrics["from"] == SCENARIOS[scenario]["networkPolicy"]["metricsFrom"]
    assert not any(m.kind == "NetworkPolicy" for m in render({"networkPolicy": {"enabled": False}}))
    external = only(render(SCENARIOS["external-triton"]), "NetworkPolicy")
    assert {p["port"] for rule in external["spec"]["ingress"] for p in rule["ports"]} == {"grpc", "http", "metrics"}


# ------------------------------------------------------------------------- production install and upgrade


RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def assert_pod_security_restricted(name: str, spec: dict[str, Any]) -> None:
    """The Pod Security Standard "restricted" (v1.25+), as the admission controller checks it."""
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key), (name, key)
    pod_sc = spec.get("securityContext", {})
    for v in spec.get("volumes", []):
        kinds_of = set(v) - {"name"}
        assert kinds_of <= RESTRICTED_VOLUME_TYPES, (name, v["name"], kinds_of)
    for c in all_containers(spec):
        sc = c.get("securityContext", {})
        where = (name, c["name"])
        assert not sc.get("privileged"), where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, where
        assert not any("hostPort" in p for p in c.get("ports", [])), where


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_pod_passes_pod_security_restricted(scenario: str) -> None:
    specs = list(pod_specs(render(SCENARIOS[scenario])))
    assert specs
    for name, spec in specs:
        assert_pod_security_restricted(name, spec)


def test_the_restricted_check_catches_a_root_container() -> None:
    spec = copy.deepcopy(pod_spec(render({})))
    spec["containers"][0]["securityContext"]["runAsUser"] = 0
    with pytest.raises(AssertionError):
        assert_pod_security_restricted("x", spec)


def _quantity_gib(q: str) -> float:
    units = {"Ki": 1 / 1024**2, "Mi": 1 / 1024, "Gi": 1.0, "Ti": 1024.0}
    return float(q[:-2]) * units[q[-2:]]


@pytest.mark.parametrize(
    ("size", "host_mem_gib", "export_mem_gib", "startup_s"),
    # host: the fp16 weights (1.11 / 7.49 / 14.1 GiB) + ~2 GiB while Triton loads; export: 2.5 x weights
    # (the exporter's pre-check), 23.0 GiB measured for 4B, >= 48 GiB for 8B on CPU (docs/export.md).
    # int4: 2.92 / 5.33 GiB of weights (float16 table) + 2 GiB; export: 2.3 x the fp32 weights (estimated,
    # presets' comments).
    [("0.6b", 3.1, 2.8, 600), ("4b", 9.5, 23.0, 900), ("8b", 16.1, 48, 1200),
     ("4b-int4-16gb", 4.92, 40, 600), ("8b-int4-24gb", 7.33, 72, 900)],
)
def test_presets_size_export_and_server(size: str, host_mem_gib: float, export_mem_gib: float, startup_s: int) -> None:
    """The presets carry the figures they document: the export fits the measured / required peak (4B: 23.0 GiB
    measured, 8B: >= 48 GiB on CPU, docs/export.md), host memory covers the weights while Triton loads, the
    startup budget and the progress deadline cover the load."""
    values = preset(size)
    manifests = render(values)
    deployment = only(manifests, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    triton = container(spec, "triton")
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == startup_s
    assert deployment["spec"]["progressDeadlineSeconds"] > startup_s + values["exportJob"].get("waitSeconds", 3600)
    assert _quantity_gib(triton["resources"]["limits"]["memory"]) >= host_mem_gib
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    shm = {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]["sizeLimit"]
    assert shm == values["triton"]["shmSize"]
    if values["exportJob"]["device"] == "gpu":  # in the server pod, on its own GPU
        assert not any(m.kind == "Job" for m in manifests)
        export = next(c for c in spec["initContainers"] if c["name"] == "export")
    else:
        [export] = only(manifests, "Job")["spec"]["template"]["spec"]["containers"]
    pairs = dict(zip(export["args"][::2], export["args"][1::2], strict=True))
    assert pairs["--model"] == values["exportJob"]["model"]
    limit = _quantity_gib(export["resources"]["limits"]["memory"])
    assert limit >= export_mem_gib
    if values["exportJob"]["device"] == "gpu":
        assert export["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pairs["--device"] == "cuda" and export["image"].endswith("-cuda")
    else:
        assert "nvidia.com/gpu" not in export["resources"]["limits"]
        assert pairs["--device"] == "cpu" and pairs["--precision"] != "bf16"
    # The CPU sizing of every preset is enough for a CPU export too (8B: >= 48 GiB).
    assert _quantity_gib(values["exportJob"]["resources"]["limits"]["memory"]) >= export_mem_gib


@pytest.mark.parametrize(("size", "model", "card_gb"), [("4b-int4-16gb", "4B", 16), ("8b-int4-24gb", "8B", 24)])
def test_quantized_presets_fit_their_card(size: str, model: str, card_gb: int) -> None:
    """The 4-bit presets: the export is asked for int4 with its method and block size (the Job's arguments), and
    export/memory.py's expected peak per instance for the preset's largest batch (fused graph, the quantized
    graph's weights) fits the card with 1 GiB left for the CUDA context; the Triton host memory covers the
    weights while they load."""
    from export.dev_model import REAL_SHAPES
    from export.memory import PeakMemory, quantized_weight_bytes
    from service.contract import Precision

    values = preset(size)
    job = values["exportJob"]
    [export] = only(render(values), "Job")["spec"]["template"]["spec"]["containers"]
    pairs = dict(zip(export["args"][::2], export["args"][1::2], strict=True))
    assert (pairs["--precision"], pairs["--quant-method"], pairs["--quant-block-size"]) == ("int4", "rtn", "32")
    # A GPU preset: float16 activations, so that attention and MatMulNBits run on ONNX Runtime's CUDA provider.
    assert pairs["--quant-activations"] == "fp16"
    s = REAL_SHAPES[model]
    weights = quantized_weight_bytes(
        s.vocab_size, s.hidden_size, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate_size, 4, 32,
        positions=s.max_position_embeddings,
    )
    config = {"num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim,
              "hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size}
    memory = PeakMemory.for_model(config, 0, Precision.INT4, fused=True, graph_bytes=weights)
    need = memory.instance_bytes(0, job["maxTokens"], job["maxBatchSize"])  # the onnxruntime backend: no split
    assert need + 2**30 <= card_gb * 10**9, f"{need / 2**30:.1f} GiB on a {card_gb} GB card"
    # The README's presets table and the preset's own comment state that figure.
    readme = (CHART_DIR / "README.md").read_text()
    row = re.search(rf"^\| {size} \|[^\n]*?\| ([0-9.]+) GiB \({card_gb} GB GPU\)", readme, re.M)
    assert row and float(row.group(1)) == round(need / 2**30, 1)
    assert f"4 x 4,096 tokens = {need / 2**30:.1f} GiB of GPU memory" in " ".join(
        line.lstrip("# ") for line in (PRESETS_DIR / f"{size}.yaml").read_text().splitlines()
    )
    # At fp16 (4B 7.49, 8B 14.1 GiB of weights) the same batch would not fit: 4-bit weights make the preset.
    fp16_weights = int({"4B": 7.49, "8B": 14.1}[model] * 2**30)
    fp16 = PeakMemory.for_model(config, 0, Precision.FP16, fused=True, graph_bytes=fp16_weights)
    assert fp16.instance_bytes(0, job["maxTokens"], job["maxBatchSize"]) > card_gb * 10**9
    triton = container(pod_spec(render(values)), "triton")
    assert _quantity_gib(triton["resources"]["limits"]["memory"]) >= weights / 2**30 + 2


# A template beside the chart's own that prints weightsGiB for every size, precision and model kind.
WEIGHTS_PROBE = """{{- $out := dict }}
{{- range $kind := list "Embedding" "Reranker" }}{{ range $size := list "0.6B" "4B" "8B" }}
{{- range $precision := list "int8" "int4" }}
{{- $args := dict "model" (printf "Qwen/Qwen3-%s-%s" $kind $size) "precision" $precision }}
{{- $_ := set $out (printf "%s %s %s" $kind $size $precision) (include "qwen3-embedding.weightsGiB" $args) }}
{{- end }}{{ end }}{{ end }}
{{- toJson $out }}
"""


def test_the_charts_quantized_weight_sizes_are_export_memorys(tmp_path: Path) -> None:
    """The chart's int8 / int4 weight sizes (weightsGiB, which the several-models memory guard sums) are
    export/memory.py quantized_weight_bytes for the real 0.6B / 4B / 8B configs at block size 32 with the float16
    embedding table and the rotary caches (max_position_embeddings) the export writes, rounded up to 0.01 GiB;
    rerankers count the same. Rendered through the chart's own helper, so a change on either side fails here
    (tests/export/test_quantized.py ties the function to the bytes the quantizer writes)."""
    import shutil

    from export.dev_model import REAL_SHAPES
    from export.memory import quantized_weight_bytes

    chart = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart)
    (chart / "templates" / "weights-probe.txt").write_text(WEIGHTS_PROBE)
    loaded = helm_python.Chart.load(chart)  # held while rendering: its native handle is freed with it
    probe = json.loads(render_raw({}, chart=loaded)["qwen3-embedding/templates/weights-probe.txt"])
    charted = {key: float(gib) for key, gib in probe.items()}
    expected = {}
    for kind in ("Embedding", "Reranker"):
        for size, s in REAL_SHAPES.items():
            for precision, bits in (("int8", 8), ("int4", 4)):
                n = quantized_weight_bytes(
                    s.vocab_size, s.hidden_size, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate_size,
                    bits, block_size=32, embedding_itemsize=2, positions=s.max_position_embeddings,
                )  # fmt: skip
                expected[f"{kind} {size} {precision}"] = math.ceil(n / 2**30 * 100) / 100
    assert charted == expected
    # The float32 table of the exports before 2026-12-05 is not what the chart counts any more.
    s = REAL_SHAPES["4B"]
    old = quantized_weight_bytes(
        s.vocab_size, s.hidden_size, s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate_size, 4,
        embedding_itemsize=4,
    )  # fmt: skip
    assert charted["Embedding 4B int4"] < old / 2**30 - 0.5


def test_quantized_exports_carry_their_method_and_block_size() -> None:
    """int8 / int4 settings reach `qwen3-embed export` for the default model and an extra model (its own
    method and block size over exportJob's); a float export gets no quantization arguments."""
    [export] = only(render(SCENARIOS["quantized"]), "Job")["spec"]["template"]["spec"]["containers"]
    pairs = dict(zip(export["args"][::2], export["args"][1::2], strict=True))
    assert (pairs["--precision"], pairs["--quant-method"], pairs["--quant-block-size"]) == ("int4", "gptq", "128")
    job = only(render(SCENARIOS["quantized"]), "Job")["spec"]["template"]["spec"]
    reranker = next(c for c in job.get("initContainers", []) + job["containers"] if "qwen3_reranker" in c["args"])
    pairs = dict(zip(reranker["args"][::2], reranker["args"][1::2], strict=True))
    assert (pairs["--precision"], pairs["--quant-method"], pairs["--quant-block-size"]) == ("int8", "rtn", "32")
    assert pairs["--quant-activations"] == "fp32"  # the default: the CPU graph
    [plain] = only(render({}), "Job")["spec"]["template"]["spec"]["containers"]
    assert "--quant-method" not in plain["args"] and "--quant-block-size" not in plain["args"]
    assert "--quant-activations" not in plain["args"]
    # An extra model's own activations over exportJob's.
    values = copy.deepcopy(SCENARIOS["quantized"])
    values["exportJob"]["quantActivations"] = "fp16"
    values["extraModels"][0]["export"]["quantActivations"] = "fp32"
    job = only(render(values), "Job")["spec"]["template"]["spec"]
    containers = job.get("initContainers", []) + job["containers"]
    by_name = {c["args"][c["args"].index("--name") + 1]: c["args"] for c in containers}
    assert by_name["qwen3_embedding"][by_name["qwen3_embedding"].index("--quant-activations") + 1] == "fp16"
    assert by_name["qwen3_reranker"][by_name["qwen3_reranker"].index("--quant-activations") + 1] == "fp32"


def test_gpu_export_runs_in_the_server_pod_on_its_own_gpu() -> None:
    """exportJob.device=gpu: no Job that would wait for a second GPU; init containers of the server pod export on
    the pod's own GPU (the pod's GPU request stays 1: init containers run before the others), writing the volume
    the other containers mount read-only."""
    manifests = render(SCENARIOS["preset-4b-gpu-export"])
    assert not any(m.kind == "Job" for m in manifests)
    spec = pod_spec(manifests)
    [export] = spec["initContainers"]  # no wait-for-model: the export itself comes first
    assert export["name"] == "export" and export["image"].endswith("-cuda")
    assert export["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert export["args"][export["args"].index("--device") + 1] == "cuda"
    assert export["args"][export["args"].index("--output") + 1] == "/workspace/models/4b-fp16"
    mounts = {m["mountPath"]: m for m in export["volumeMounts"]}
    assert mounts["/workspace"]["name"] == "model-repository" and not mounts["/workspace"].get("readOnly")
    assert mounts["/tmp"]["name"] == "export-tmp" and mounts["/dev/shm"]["name"] == "dshm"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "readOnly" not in volumes["model-repository"]["persistentVolumeClaim"] and "export-tmp" in volumes
    for c in spec["containers"]:
        assert {m["name"]: m for m in c["volumeMounts"]}["model-repository"]["readOnly"] is True, c["name"]
    nvidia = render(merged(SCENARIOS["preset-4b-gpu-export"], {"runtimeClassName": "nvidia"}))
    assert pod_spec(nvidia)["runtimeClassName"] == "nvidia"
    # The progress deadline covers the export in the pod as well as the load.
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["progressDeadlineSeconds"] >= 7200 + 900
    # A CPU export stays a Job next to the server pod (ReadWriteOnce) and gets no GPU.
    cpu_job = only(render({}), "Job")["spec"]["template"]["spec"]
    assert "podAffinity" in cpu_job["affinity"] and "runtimeClassName" not in cpu_job


@pytest.mark.parametrize(
    "change",
    [
        {"exportJob": {"image": {"tag": "0.2.0"}}},
        {"exportJob": {"resources": {"limits": {"memory": "20Gi"}}}},
        {"exportJob": {"hfTokenSecret": {"name": "other-token"}}},
        {"imagePullSecrets": [{"name": "regcred"}]},
        {"exportJob": {"activeDeadlineSeconds": 3600}},
    ],
    ids=lambda v: str(v)[:50],
)
def test_upgrade_with_a_changed_job_spec_creates_a_new_job(change: dict[str, Any]) -> None:
    """A Job's pod template is immutable: `helm upgrade` must never patch it. The name hashes the whole spec,
    so any change makes a new Job (Helm deletes the old one) and an unchanged spec keeps the name."""
    first = only(render({}), "Job")
    again = only(render({}), "Job")
    second = only(render(change), "Job")
    assert first["metadata"]["name"] == again["metadata"]["name"]
    assert first["spec"] != second["spec"]
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert len(second["metadata"]["name"]) <= 63
    long_name = only(render(merged(change, {"fullnameOverride": "x" * 80})), "Job")["metadata"]["name"]
    assert len(long_name) <= 63
    # The server pods are untouched by an export-only change.
    if set(change) == {"exportJob"}:
        before, after = only(render({}), "Deployment"), only(render(change), "Deployment")
        assert before["spec"]["template"] == after["spec"]["template"]


def test_export_job_as_a_hook_is_replaced_on_upgrade() -> None:
    job = only(render(SCENARIOS["hook-export"]), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert "podAffinity" not in job["spec"]["template"]["spec"].get("affinity", {})
    changed = only(render(merged(SCENARIOS["hook-export"], {"exportJob": {"image": {"tag": "9"}}})), "Job")
    assert changed["metadata"]["name"] == job["metadata"]["name"]  # deleted and re-created by Helm


def test_model_versions_switch_and_roll_back_by_values() -> None:
    def where(version: str) -> tuple[str, str]:
        manifests = render({"model": {"version": version}})
        mount = {m["name"]: m for m in container(pod_spec(manifests), "triton")["volumeMounts"]}
        args = only(manifests, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
        return mount["model-repository"]["subPath"], args[args.index("--output") + 1]

    assert where("v1") == ("models/v1", "/workspace/models/v1")
    assert where("v2") == ("models/v2", "/workspace/models/v2")  # a new export never overwrites v1
    # Export v2 while the pods still serve v1; then switch (and back) with model.version alone.
    staged = render({"exportJob": {"version": "v2"}})
    args = only(staged, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--output") + 1] == "/workspace/models/v2"
    assert only(staged, "Deployment")["spec"]["template"] == only(render({}), "Deployment")["spec"]["template"]
    job = only(render({}), "Job")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(job)["SKIP_IF_PRESENT"] == "true"  # re-running v1's Job does not re-export


def test_deployment_settings_for_scarce_gpus() -> None:
    deployment = only(render({}), "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    startup = container(deployment["spec"]["template"]["spec"], "triton")["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    # Startup budget + the export wait + 600 s, not Kubernetes' 600 s default.
    assert deployment["spec"]["progressDeadlineSeconds"] == budget + 3600 + 600
    assert only(render({"progressDeadlineSeconds": 5400}), "Deployment")["spec"]["progressDeadlineSeconds"] == 5400
    spec = deployment["spec"]["template"]["spec"]
    [spread] = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_multi_replica_needs_a_shared_volume() -> None:
    deployment = only(render(SCENARIOS["multi-replica-rwx"]), "Deployment")
    assert deployment["spec"]["replicas"] == 3
    allowed = {"replicaCount": 2, "modelRepository": {"allowSingleNodeReplicas": True}}
    assert only(render(allowed), "Deployment")["spec"]["replicas"] == 2
    with pytest.raises(helm_python.HelmError, match="ReadWriteOnce model volume"):
        render_raw({"replicaCount": 3})


def test_pod_labels_carry_no_chart_version() -> None:
    labels = only(render({}), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels
    # A chart or app version bump alone does not change the pod template.
    bumped = copy.deepcopy(render({}))
    assert only(bumped, "Deployment")["spec"]["template"] == only(render({}), "Deployment")["spec"]["template"]


def test_keda_scales_on_in_flight_requests() -> None:
    manifests = render(SCENARIOS["autoscaling-keda"])
    assert not any(m.kind == "HorizontalPodAutoscaler" for m in manifests)  # KEDA owns the HPA
    scaled = only(manifests, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 4)
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert "qwen3_embed_in_flight_requests" in meta["query"] and f'namespace="{NAMESPACE}"' in meta["query"]
    assert meta["threshold"] == "32" and meta["serverAddress"].startswith("http")
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is map[string]string
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "replicas" not in only(manifests, "Deployment")["spec"]
    queue = "sum(rate(nv_inference_queue_duration_us[1m]))"
    custom = render(merged(SCENARIOS["autoscaling-keda"], {"autoscaling": {"keda": {"query": queue}}}))
    assert only(custom, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"] == queue


def test_grpc_ingress_and_grpc_route() -> None:
    manifests = render(SCENARIOS["everything"])
    ingress = only(manifests, "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    [rule] = ingress["spec"]["rules"]
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": FULLNAME, "port": {"name": "grpc"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "emb-tls"
    tls = merged(SCENARIOS["tls"], {"ingress": {"enabled": True}})
    grpcs = only(render(tls), "Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"]
    assert grpcs == "GRPCS"
    route = only(manifests, "GRPCRoute")
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "gateways"}]
    [backend] = route["spec"]["rules"][0]["backendRefs"]
    assert backend == {"name": FULLNAME, "port": 50051}


def test_tensorrt_engine_cache_lives_on_the_model_volume() -> None:
    manifests = render(SCENARIOS["tensorrt-cache"])
    spec = pod_spec(manifests)
    mounts = [m for m in container(spec, "triton")["volumeMounts"] if m["name"] == "model-repository"]
    cache = next(m for m in mounts if m["mountPath"] != "/models")
    assert cache["subPath"] == "models/.trt-cache/v1" and not cache.get("readOnly")
    assert next(m for m in mounts if m["mountPath"] == "/models")["readOnly"] is True
    export = only(manifests, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert export["args"][export["args"].index("--trt-engine-cache") + 1] == cache["mountPath"]
    assert "--trt-engine-cache" in _export_help()
    # Without TensorRT the volume stays read-only for the server.
    volume = {v["name"]: v for v in pod_spec(render({}))["volumes"]}["model-repository"]
    assert volume["persistentVolumeClaim"]["readOnly"] is True


def test_json_logs_option() -> None:
    env = env_of(container(pod_spec(render({"facade": {"logFormat": "json"}})), "facade"))
    assert env["QWEN3_EMBED_LOG_FORMAT"] == "json"
    assert "QWEN3_EMBED_LOG_FORMAT" not in env_of(container(pod_spec(render({})), "facade"))


def test_init_container_wait_is_bounded_and_says_why(tmp_path: Path) -> None:
    """Run the rendered wait script with /bin/sh: it returns once the model is published and fails with a
    message, instead of waiting forever, when the deadline passes."""
    [wait] = pod_spec(render({"exportJob": {"waitSeconds": 60}}))["initContainers"]
    script = wait["command"][2].replace("/models/", f"{tmp_path}/").replace("+ 60 ))", "+ 0 ))")
    failed = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1
    assert "FATAL: no model at" in failed.stderr and "export Job" in failed.stderr
    assert wait["terminationMessagePolicy"] == "FallbackToLogsOnError"
    (tmp_path / "qwen3_embedding").mkdir()
    (tmp_path / "qwen3_embedding" / "config.pbtxt").write_text("")
    assert subprocess.run(["/bin/sh", "-c", script], timeout=30).returncode == 0


PUBLISHED_CONFIG = """name: "{name}"
parameters {{ key: "source_model" value {{ string_value: "{source}" }} }}
parameters {{ key: "precision" value {{ string_value: "{precision}" }} }}
parameters {{ key: "hidden_size" value {{ string_value: "1024" }} }}
parameters {{ key: "max_input_tokens" value {{ string_value: "8192" }} }}
parameters {{ key: "embedding_rows" value {{ string_value: "151669" }} }}
"""


def publish(version_dir: Path, name: str, source: str, precision: str = "fp16") -> None:
    """What an export leaves in <version>/<name>: its config.pbtxt with the model's identity."""
    (version_dir / name).mkdir(parents=True, exist_ok=True)
    text = PUBLISHED_CONFIG.format(name=name, source=source, precision=precision)
    (version_dir / name / "config.pbtxt").write_text(text)


def export_shim(tmp_path: Path) -> Path:
    """A `qwen3-embed` on PATH for the rendered export scripts: where the version already holds the model it is
    the real CLI (`--skip-if-published` decides before any export starts); elsewhere it prints its arguments
    instead of exporting (no weights offline)."""
    shim = tmp_path / "bin" / "qwen3-embed"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(
        "#!/bin/sh\n"
        'if [ -f "$OUTPUT/$MODEL_NAME/config.pbtxt" ]; then\n'
        f'  cd {ROOT} && exec {sys.executable} -m service.cli "$@"\n'
        "fi\n"
        'echo "ARGS $*"\n'
    )
    shim.chmod(0o755)
    return shim.parent


def run_export_container(c: dict[str, Any], output: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The container's command as the kubelet runs it, with the volume's /workspace at tmp_path."""
    args = list(c["args"])
    assert args[args.index("--output") + 1] == env_of(c)["OUTPUT"]
    args[args.index("--output") + 1] = str(output)
    env = {**os.environ, **env_of(c), "OUTPUT": str(output), "PATH": f"{export_shim(tmp_path)}:/usr/bin:/bin"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*c["command"], *args], env=env, capture_output=True, text=True, timeout=120)


def test_export_wrapper_skips_the_same_model_and_refuses_another(tmp_path: Path) -> None:
    """The rendered export script, run with the real CLI: nothing published -> it exports with the chart's
    arguments; the same source and precision published -> exit 0 at once; another source or precision -> exit 2
    with the reason, the published model untouched (never skipped over, never replaced)."""
    [export] = only(render({}), "Job")["spec"]["template"]["spec"]["containers"]
    out = tmp_path / "models" / "v1"
    ran = run_export_container(export, out, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("ARGS export --skip-if-published --model Qwen/Qwen3-Embedding-0.6B")
    assert out.is_dir()
    publish(out, "qwen3_embedding", "Qwen/Qwen3-Embedding-0.6B")
    skipped = run_export_container(export, out, tmp_path)
    assert skipped.returncode == 0 and "nothing to export" in skipped.stdout and "ARGS" not in skipped.stdout
    publish(out, "qwen3_embedding", "Qwen/Qwen3-Embedding-4B")
    before = (out / "qwen3_embedding" / "config.pbtxt").read_text()
    refused = run_export_container(export, out, tmp_path)
    assert refused.returncode == 2 and "already holds another model" in refused.stderr
    assert "source Qwen/Qwen3-Embedding-4B (asked: Qwen/Qwen3-Embedding-0.6B)" in refused.stderr
    assert (out / "qwen3_embedding" / "config.pbtxt").read_text() == before
    publish(out, "qwen3_embedding", "Qwen/Qwen3-Embedding-0.6B", precision="fp32")
    assert run_export_container(export, out, tmp_path).returncode == 2


# ------------------------------------------------------------------------------------------ several models


def export_containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The export Job's containers by the model each exports (its MODEL_NAME), in the order they run."""
    spec = job["spec"]["template"]["spec"]
    return {env_of(c)["MODEL_NAME"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def test_several_models_are_loaded_exported_and_served() -> None:
    manifests = render(SCENARIOS["several-models"])
    names = ["qwen3_embedding", "qwen3_reranker", "qwen3_embedding_4b"]
    spec = pod_spec(manifests)
    triton = container(spec, "triton")
    assert [a.removeprefix("--load-model=") for a in triton["args"] if a.startswith("--load-model=")] == names
    env = env_of(container(spec, "facade"))
    assert env["QWEN3_EMBED_MODEL_NAME"] == "qwen3_embedding"  # still the default embedding model
    assert env["QWEN3_EMBED_MODELS"] == ",".join(names)
    assert env["QWEN3_EMBED_RERANK_MODEL_NAME"] == "qwen3_reranker"
    settings = Settings(**{k.removeprefix("QWEN3_EMBED_").lower(): v for k, v in env.items() if "MODEL" in k})
    assert settings.models == names and settings.rerank_model_name == "qwen3_reranker"
    assert settings.resolved_tokenizer_dir("qwen3_reranker") == Path("/models/qwen3_reranker/tokenizer")
    [wait] = spec["initContainers"]
    for name in names:
        assert f'"/models/{name}/config.pbtxt"' in wait["command"][2], name

    # One Job: the extra models in init containers, one after another, then the default model.
    job = only(manifests, "Job")
    by_model = export_containers(job)
    assert list(by_model) == ["qwen3_reranker", "qwen3_embedding_4b", "qwen3_embedding"]
    job_spec = job["spec"]["template"]["spec"]
    assert [c["name"] for c in job_spec["initContainers"]] == ["export-qwen3-reranker", "export-qwen3-embedding-4b"]
    assert [c["name"] for c in job_spec["containers"]] == ["export"]
    pairs = {model: dict(zip(c["args"][::2], c["args"][1::2], strict=True)) for model, c in by_model.items()}
    help_text = _export_help()
    for model, args in pairs.items():
        assert args["--name"] == model
        assert args["--output"] == "/workspace/models/v1"  # one version directory for all
        assert args["--device"] == "cpu" and args["--backend"] == "onnxruntime" and args["--precision"] == "fp16"
        for flag in args:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"export has no {flag}"
    assert pairs["qwen3_reranker"]["--model"] == "Qwen/Qwen3-Reranker-0.6B"
    assert (pairs["qwen3_reranker"]["--max-tokens"], pairs["qwen3_reranker"]["--max-batch-size"]) == ("4096", "16")
    assert pairs["qwen3_embedding_4b"]["--max-batch-size"] == "8"
    assert pairs["qwen3_embedding_4b"]["--instances"] == "1"  # its own extraArgs
    assert "--instances" not in pairs["qwen3_embedding"]
    assert pairs["qwen3_embedding"]["--model"] == "Qwen/Qwen3-Embedding-0.6B"
    # The same image, resources, mounts and skip logic for each model.
    main = by_model["qwen3_embedding"]
    for c in by_model.values():
        assert c["image"] == main["image"] and c["resources"] == main["resources"] and c["command"] == main["command"]
        assert c["volumeMounts"] == main["volumeMounts"]
        assert {k: v for k, v in env_of(c).items() if k != "MODEL_NAME"} == {
            k: v for k, v in env_of(main).items() if k != "MODEL_NAME"
        }


def test_default_values_render_as_without_extra_models() -> None:
    """extraModels: [] and rerankModel: "" are today's chart: one model, one export container; the facade is told
    to serve that one model (not every directory in Triton's repository index, which in explicit mode lists
    models Triton did not load and would keep the facade unready)."""
    default = render_raw({})
    assert default == render_raw({"extraModels": [], "rerankModel": ""})
    manifests = render({})
    spec = pod_spec(manifests)
    assert [a for a in container(spec, "triton")["args"] if a.startswith("--load-model")] == [
        "--load-model=qwen3_embedding"
    ]
    env = env_of(container(spec, "facade"))
    assert env["QWEN3_EMBED_MODELS"] == "qwen3_embedding" and "QWEN3_EMBED_RERANK_MODEL_NAME" not in env
    job_spec = only(manifests, "Job")["spec"]["template"]["spec"]
    assert "initContainers" not in job_spec and [c["name"] for c in job_spec["containers"]] == ["export"]
    notes = default["qwen3-embedding/templates/NOTES.txt"]
    assert "EmbeddingService/Rerank" not in notes and "served models" not in notes


def test_adding_a_model_makes_a_new_job_that_skips_the_published_ones(tmp_path: Path) -> None:
    """The Job's name hashes its spec: adding a reranker to a release makes a new Job; run as the kubelet would
    (init containers, then the main one), it exports the reranker and skips the default model already
    published in the version directory."""
    values = {"extraModels": [{"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-0.6B"}}]}
    before, after = only(render({}), "Job"), only(render(values), "Job")
    assert before["metadata"]["name"] != after["metadata"]["name"] and len(after["metadata"]["name"]) <= 63
    out = tmp_path / "models" / "v1"
    publish(out, "qwen3_embedding", "Qwen/Qwen3-Embedding-0.6B")
    ran = {}
    for model, c in export_containers(after).items():
        proc = run_export_container(c, out, tmp_path)
        assert proc.returncode == 0, proc.stderr
        ran[model] = proc.stdout
    assert ran["qwen3_reranker"].startswith("ARGS export --skip-if-published --model Qwen/Qwen3-Reranker-0.6B")
    assert "--name qwen3_reranker" in ran["qwen3_reranker"]
    assert "nothing to export" in ran["qwen3_embedding"] and "ARGS" not in ran["qwen3_embedding"]


def test_several_models_wait_script_waits_for_each(tmp_path: Path) -> None:
    values = merged(SCENARIOS["several-models"], {"exportJob": {"waitSeconds": 60}})
    [wait] = pod_spec(render(values))["initContainers"]
    script = wait["command"][2].replace("/models/", f"{tmp_path}/").replace("+ 60 ))", "+ 0 ))")
    names = ["qwen3_embedding", "qwen3_reranker", "qwen3_embedding_4b"]
    for published in range(len(names)):
        failed = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert failed.returncode == 1
        assert f"FATAL: no model at {tmp_path}/{names[published]}/config.pbtxt" in failed.stderr
        (tmp_path / names[published]).mkdir()
        (tmp_path / names[published] / "config.pbtxt").write_text("")
    assert subprocess.run(["/bin/sh", "-c", script], timeout=30).returncode == 0


def test_an_extra_model_without_export_is_served_not_exported() -> None:
    """An entry without `export` is already in the repository (e.g. copied there): Triton loads it, the pods
    wait for it, the Job does not export it; with no export Job at all the facade still lists it."""
    values = {"extraModels": [{"name": "qwen3_reranker"}]}
    manifests = render(values)
    assert "initContainers" not in only(manifests, "Job")["spec"]["template"]["spec"]
    spec = pod_spec(manifests)
    assert "--load-model=qwen3_reranker" in container(spec, "triton")["args"]
    assert "/models/qwen3_reranker/config.pbtxt" in spec["initContainers"][0]["command"][2]
    claim = merged(SCENARIOS["existing-claim"], values)
    env = env_of(container(pod_spec(render(claim)), "facade"))
    assert env["QWEN3_EMBED_MODELS"] == "qwen3_embedding,qwen3_reranker"
    external = merged(SCENARIOS["external-triton"], values)
    assert env_of(container(pod_spec(render(external)), "facade"))["QWEN3_EMBED_MODELS"] == (
        "qwen3_embedding,qwen3_reranker"
    )


def test_an_extra_model_on_tensorrt_gets_the_engine_cache() -> None:
    values = {
        "extraModels": [
            {"name": "qwen3_reranker", "export": {"model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "tensorrt"}}
        ]
    }
    manifests = render(values)
    mounts = [m for m in container(pod_spec(manifests), "triton")["volumeMounts"] if m["name"] == "model-repository"]
    assert any(m.get("subPath") == "models/.trt-cache/v1" for m in mounts)
    by_model = export_containers(only(manifests, "Job"))
    assert "--trt-engine-cache" in by_model["qwen3_reranker"]["args"]
    assert by_model["qwen3_reranker"]["args"][by_model["qwen3_reranker"]["args"].index("--accelerator") + 1] == (
        "tensorrt"
    )
    assert "--trt-engine-cache" not in by_model["qwen3_embedding"]["args"]  # its export uses no TensorRT


def test_notes_show_the_models_and_a_rerank_call() -> None:
    from google.protobuf import json_format

    from service.gen.embedding.v1 import embedding_pb2 as pb

    notes = render_raw(SCENARIOS["several-models"])["qwen3-embedding/templates/NOTES.txt"]
    assert "served models: qwen3_embedding, qwen3_reranker, qwen3_embedding_4b" in notes
    assert "-c export-qwen3-reranker" in notes
    pattern = r"grpcurl[^\n]*\\\n\s*-d '(\{.*\})' \\\n\s*localhost:50051 embedding\.v1\.EmbeddingService/Rerank"
    rerank = re.search(pattern, notes)
    assert rerank, notes
    request = json_format.Parse(rerank.group(1), pb.RerankRequest())  # the proto's field names
    assert request.query and len(request.documents) >= 2


def test_readme_several_models_example_renders() -> None:
    """The README's values file for embedding 4B + reranker 4B goes over presets/4b.yaml and passes the chart's
    memory guard: Triton's host memory covers both models' weights."""
    readme = (CHART_DIR / "README.md").read_text()
    assert "## Several models" in readme
    block = re.search(r"```yaml\n(# several-models\.yaml.*?)```", readme, re.S)
    assert block, "no several-models.yaml example in the README"
    values = merged(preset("4b"), yaml.safe_load(block.group(1)))
    manifests = render(values)
    for m in manifests:
        if (m.doc["apiVersion"], m.kind) not in CRD_KINDS:
            kubernetes_validate.validate(m.doc, KUBE_VERSIONS[-1], strict=True)
    triton = container(pod_spec(manifests), "triton")
    assert [a for a in triton["args"] if a.startswith("--load-model")] == [
        "--load-model=qwen3_embedding",
        "--load-model=qwen3_reranker",
    ]
    # Host memory: 2 x 7.49 GiB of fp16 weights loaded at once + ~2 GiB.
    assert _quantity_gib(triton["resources"]["limits"]["memory"]) >= 2 * 7.49 + 2
    by_model = export_containers(only(manifests, "Job"))
    assert by_model["qwen3_reranker"]["args"][1] == "Qwen/Qwen3-Reranker-4B"
    assert _quantity_gib(by_model["qwen3_reranker"]["resources"]["limits"]["memory"]) >= 23.0

# ------------------------------------------------------------------ typed facade settings (priority, tracing, cache)

# (value path under facade, a value other than the default, the variable, its text, the Settings field)
TYPED = [
    (("priority", "classes"), False, "QWEN3_EMBED_PRIORITY_CLASSES", "false", "priority_classes"),
    (("priority", "bulkCallsInFlight"), 3, "QWEN3_EMBED_BULK_CALLS_IN_FLIGHT", "3", "bulk_calls_in_flight"),
    (("priority", "bulkTokenBudget"), 4096, "QWEN3_EMBED_BULK_TOKEN_BUDGET", "4096", "bulk_token_budget"),
    (("priority", "bulkWindowSeconds"), 0.5, "QWEN3_EMBED_BULK_WINDOW_S", "0.5", "bulk_window_s"),
    (("tracing", "enabled"), True, "QWEN3_EMBED_TRACING", "true", "tracing"),
    (
        ("tracing", "otlpEndpoint"),
        "https://otel:4317",
        "QWEN3_EMBED_OTLP_ENDPOINT",
        "https://otel:4317",
        "otlp_endpoint",
    ),
    (("tracing", "queueSpans"), 512, "QWEN3_EMBED_TRACING_QUEUE_SPANS", "512", "tracing_queue_spans"),
    (("tracing", "exportTimeoutSeconds"), 10, "QWEN3_EMBED_TRACING_EXPORT_TIMEOUT_S", "10", "tracing_export_timeout_s"),
    (("embeddingCacheBytes",), 268435456, "QWEN3_EMBED_EMBEDDING_CACHE_BYTES", "268435456", "embedding_cache_bytes"),
]
TYPED_NAMES = {name for _, _, name, _, _ in TYPED}


def facade_values(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return {"facade": value}


def chart_default(path: tuple[str, ...]) -> Any:
    node: Any = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["facade"]
    for key in path:
        node = node[key]
    return node


@pytest.mark.parametrize(("path", "value", "name", "text", "field"), TYPED, ids=[t[2] for t in TYPED])
def test_a_typed_facade_value_reaches_the_facade(
    path: tuple[str, ...], value: Any, name: str, text: str, field: str
) -> None:
    """Each value set becomes its variable in the facade container (and nowhere else), which the facade reads
    back as that value; at its default it adds no variable."""
    manifests = render(facade_values(path, value))
    spec = pod_spec(manifests)
    env = env_of(container(spec, "facade"))
    assert env[name] == text
    assert TYPED_NAMES & set(env) == {name}
    assert getattr(Settings(**{field: env[name]}), field) == value
    for c in all_containers(spec):
        if c["name"] != "facade":
            assert name not in env_of(c)
    at_default = env_of(container(pod_spec(render(facade_values(path, chart_default(path)))), "facade"))
    assert TYPED_NAMES & set(at_default) == set()


@pytest.mark.parametrize(("path", "value", "name", "text", "field"), TYPED, ids=[t[2] for t in TYPED])
def test_the_typed_defaults_are_the_facades_own(
    path: tuple[str, ...], value: Any, name: str, text: str, field: str
) -> None:
    """values.yaml holds the facade's defaults (service/settings.py), so leaving a value alone and the chart
    writing no variable for it mean the same."""
    default = Settings.model_fields[field].default
    assert chart_default(path) == default and value != default


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "everything"])
def test_a_render_without_the_typed_values_has_the_env_it_had_before(scenario: str) -> None:
    """The typed values at their defaults add no variable: every container's env is what it was before they
    existed (the rest of the env comes from templates this change left alone)."""
    for _, spec in pod_specs(render(SCENARIOS[scenario])):
        for c in all_containers(spec):
            assert TYPED_NAMES & set(env_of(c)) == set(), (scenario, c["name"])


def test_a_typed_value_and_the_same_variable_elsewhere_fail() -> None:
    """One source per setting: a typed value and facade.settings / facade.extraEnv naming the same variable
    fail the render instead of writing it twice (a duplicate env name breaks server-side apply)."""
    with pytest.raises(helm_python.HelmError, match=re.escape("facade.tracing.enabled sets QWEN3_EMBED_TRACING")):
        render_raw({"facade": {"tracing": {"enabled": True}, "settings": {"tracing": True}}})
    extra = [{"name": "QWEN3_EMBED_EMBEDDING_CACHE_BYTES", "value": "1"}]
    with pytest.raises(helm_python.HelmError, match=re.escape("facade.embeddingCacheBytes sets")):
        render_raw({"facade": {"embeddingCacheBytes": 1024, "extraEnv": extra}})
    # Left at their defaults, the typed values leave extraEnv and settings in charge, as before them.
    env = env_of(container(pod_spec(render({"facade": {"extraEnv": extra, "settings": {"tracing": True}}})), "facade"))
    assert env["QWEN3_EMBED_EMBEDDING_CACHE_BYTES"] == "1" and env["QWEN3_EMBED_TRACING"] == "true"


@pytest.mark.parametrize(
    ("facade", "memory"),
    [
        ({}, {"requests": "2Gi", "limits": "2Gi"}),  # no cache: the values as given (Guaranteed: request = limit)
        ({"embeddingCacheBytes": 268435456}, {"requests": "2560Mi", "limits": "2560Mi"}),  # 2 workers x 256 MiB
        ({"embeddingCacheBytes": 268435456, "workers": 1}, {"requests": "2304Mi", "limits": "2304Mi"}),
        (
            {"embeddingCacheBytes": 1000, "workers": 0, "resources": {"limits": {"memory": "3G"}}},
            {"requests": "2862Mi", "limits": "2862Mi"},
        ),
    ],
    ids=str,
)
def test_the_facade_memory_counts_the_cache(facade: dict[str, Any], memory: dict[str, str]) -> None:
    """The cache is per worker process and on top of what facade.resources were sized for: the chart adds
    workers x embeddingCacheBytes to the memory request and limit (rounded up to MiB)."""
    res = container(pod_spec(render({"facade": facade})), "facade")["resources"]
    assert {side: res[side]["memory"] for side in ("requests", "limits")} == memory


def test_the_cache_on_a_cpu_pod_raises_request_and_limit_each() -> None:
    """Without a GPU the pod keeps its request and limit apart; each grows by the cache (4 auto workers from
    the 4-CPU limit, x 64 MiB)."""
    values = merged(SCENARIOS["cpu-only"], {"facade": {"workers": 0, "embeddingCacheBytes": 64 * 2**20}})
    res = container(pod_spec(render(values)), "facade")["resources"]
    assert res["requests"]["memory"] == "1280Mi" and res["limits"]["memory"] == "2304Mi"


def test_a_memory_quantity_the_chart_cannot_add_to_fails() -> None:
    values = {"facade": {"embeddingCacheBytes": 1024, "resources": {"limits": {"memory": "2e9"}}}}
    with pytest.raises(helm_python.HelmError, match=re.escape('facade.resources.limits.memory "2e9"')):
        render_raw(values)


def test_the_readme_documents_the_typed_values() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    for path, _, name, _, _ in TYPED:
        assert f"`.{path[-1]}`" in readme or f"`facade.{'.'.join(path)}`" in readme, path
        assert name.removeprefix("QWEN3_EMBED_") in readme, name
