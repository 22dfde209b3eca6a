"""Every install and upgrade path the chart README documents, rendered as Helm applies it on one GPU node, and
the ones the chart refuses, each with its reason.

Helm is simulated offline: `helm install`, `helm upgrade --reuse-values` (the previous revision's values, then
each -f file and --set in order), `helm rollback` (the stored manifests of the target revision are applied again,
nothing is rendered). `lookup` finds nothing offline: the live model claim is handed to the chart through
`clusterState.modelClaim`, the values key that stands in for lookup where the chart cannot ask the cluster. The
export containers of each step run as the kubelet runs them, with the real `qwen3-embed export
--skip-if-published` deciding (tests/deployment/test_helm.py export_shim) over a simulated volume.

For each step: no object waits forever for a resource its own release holds (the node's one GPU, its CPUs and
memory, the ReadWriteOnce volume), no PVC shrinks or changes an immutable field, no served name differs from the
exported source, and no export skips over a version that holds another source."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import pytest

from service.contract import ModelFacts
from service.model_identity import HIDDEN_SIZE_OF, claim_of, contradiction
from tests.deployment.test_helm import (
    CHART_DIR,
    Manifest,
    _quantity_gib,
    env_of,
    merged,
    only,
    preset,
    render_raw,
    run_export_container,
)

# One GPU node of the size the chart README documents ("Node sizes"): 8 vCPU, 64 GiB, 1 GPU, of which the
# kubelet's reservations and the daemonsets are taken to leave 7 CPUs and 56 GiB to this release.
NODE_GPUS = 1
NODE_CPUS = 7.0
NODE_MEMORY_GIB = 56.0
RWX_CLAIM = {"existingClaim": "shared-models"}


def manifests_of(rendered: dict[str, str]) -> list[Manifest]:
    import yaml

    out: list[Manifest] = []
    for template, text in rendered.items():
        if template.endswith(".yaml"):
            out.extend(Manifest(template, doc) for doc in yaml.safe_load_all(text) if doc)
    return out


def cpu(q: Any) -> float:
    text = str(q)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def requests_of(containers: list[dict[str, Any]], key: str) -> float:
    total = 0.0
    for c in containers:
        value = c.get("resources", {}).get("requests", {}).get(key)
        if value is not None:
            total += cpu(value) if key == "cpu" else (_quantity_gib(value) if key == "memory" else float(value))
    return total


def pod_requests(spec: dict[str, Any], key: str) -> float:
    """What the scheduler reserves for a pod: the larger of its biggest init container and its containers' sum."""
    inits = [requests_of([c], key) for c in spec.get("initContainers", [])]
    return max([requests_of(spec["containers"], key), *inits])


def export_containers_of(manifests: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    """(where, container) of every export container: a Job's (init) containers or the server pod's init ones."""
    found = []
    for m in manifests:
        spec = m.doc["spec"]["template"]["spec"] if m.kind in {"Job", "Deployment"} else None
        if spec is None:
            continue
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["name"] == "export" or c["name"].startswith("export-"):
                found.append((f"{m.kind}/{m.name}", c))
    return found


@dataclass
class Cluster:
    """One GPU node, the release's live objects and the model volume's content."""

    workspace: Path
    claim: dict[str, Any] | None = None  # the live PVC: {size, accessModes}
    jobs: set[str] = field(default_factory=set)  # Job names that exist (completed)
    revisions: list[tuple[dict[str, Any], list[Manifest]]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def lookup_values(self) -> dict[str, Any]:
        return {"clusterState": {"modelClaim": copy.deepcopy(self.claim)}} if self.claim else {}


def render_release(values: dict[str, Any], cluster: Cluster, upgrade: bool) -> list[Manifest]:
    rendered = render_raw(
        merged(values, cluster.lookup_values()),
        revision=len(cluster.revisions) + 1,
        is_install=not upgrade,
        is_upgrade=upgrade,
    )
    return manifests_of(rendered)


def apply(cluster: Cluster, manifests: list[Manifest], tmp_path: Path, upgrade: bool) -> None:
    """Applies one revision as Helm and the kubelet would, asserting the acceptance conditions on the way."""
    # The PVC: never shrunk, access modes and class unchanged.
    for m in manifests:
        if m.kind != "PersistentVolumeClaim":
            continue
        spec = m.doc["spec"]
        size, modes = spec["resources"]["requests"]["storage"], spec["accessModes"]
        if cluster.claim is not None:
            assert _quantity_gib(size) >= _quantity_gib(cluster.claim["size"]), f"PVC shrinks to {size}"
            assert modes == cluster.claim["accessModes"], f"PVC access modes change to {modes}"
            size = max(size, cluster.claim["size"], key=_quantity_gib)
        cluster.claim = {"size": size, "accessModes": modes}

    deployment = only(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    replicas = deployment["spec"].get("replicas", 1)
    # Jobs Kubernetes creates now: new names (a spec change), and hooks (Helm re-creates them every time).
    jobs = [m for m in manifests if m.kind == "Job"]
    hooks = {m.name for m in jobs if "helm.sh/hook" in m.doc["metadata"].get("annotations", {})}
    new_jobs = [m for m in jobs if m.name not in cluster.jobs or m.name in hooks]
    # Pods that run at the same time on the one node: the server pod(s) and every Job Kubernetes creates now.
    running = [pod] * replicas + [j.doc["spec"]["template"]["spec"] for j in new_jobs]
    gpus = sum(pod_requests(s, "nvidia.com/gpu") for s in running)
    assert gpus <= NODE_GPUS, f"{gpus} GPUs wanted at once on a {NODE_GPUS}-GPU node: one would wait forever"
    cpus = sum(pod_requests(s, "cpu") for s in running)
    assert cpus <= NODE_CPUS, f"{cpus} CPUs requested at once: the export would never schedule"
    memory = sum(pod_requests(s, "memory") for s in running)
    assert memory <= NODE_MEMORY_GIB, f"{memory:.1f} GiB requested at once"
    for job in new_jobs:
        annotations = job.doc["metadata"].get("annotations", {})
        if upgrade and "pre-upgrade" in annotations.get("helm.sh/hook", ""):
            # Runs while the old pod holds its GPU and mounts the volume: only a CPU export on a shared volume.
            assert pod_requests(job.doc["spec"]["template"]["spec"], "nvidia.com/gpu") == 0
            assert {"ReadWriteMany"} & set((cluster.claim or {}).get("accessModes", [])), "hook on RWO volume"
        # A ReadWriteOnce volume: the Job must land on the server pod's node.
        if "ReadWriteMany" not in (cluster.claim or {}).get("accessModes", ["ReadWriteOnce"]) and replicas:
            affinity = job.doc["spec"]["template"]["spec"].get("affinity", {})
            assert "podAffinity" in affinity or "pre-install" in annotations.get("helm.sh/hook", "")
    cluster.jobs = {m.name for m in manifests if m.kind == "Job"}  # Helm deletes the Jobs a revision drops

    # The exports, in order (Jobs and the server pod's init containers alike), with the real skip logic.
    for where, c in export_containers_of(manifests):
        args = dict(zip(c["args"][::2], c["args"][1::2], strict=False))
        assert "--skip-if-published" in " ".join(c["command"]), where
        version_dir = cluster.workspace / Path(args["--output"]).relative_to("/workspace")
        published = version_dir / args["--name"] / "config.pbtxt"
        before = published.read_text() if published.exists() else None
        ran = run_export_container(c, version_dir, tmp_path)
        if before is None:  # exported: the shim printed the arguments it got; publish what they ask for
            assert ran.returncode == 0 and ran.stdout.startswith("ARGS export"), ran.stderr
            publish_export(version_dir, args)
            cluster.log.append(f"{where}: exported {args['--model']} into {version_dir.name}")
        elif ran.returncode == 0:
            assert "nothing to export" in ran.stdout
            assert _identity(published).source_model == args["--model"], "skipped over another source"
            cluster.log.append(f"{where}: skipped {version_dir.name} (same source)")
        else:  # another source or precision: loud, and the published model untouched
            assert ran.returncode == 2 and "already holds another model" in ran.stderr, ran.stderr
            assert published.read_text() == before
            cluster.log.append(f"{where}: refused {version_dir.name}")

    # What the pods serve: the version they mount holds the model, under a name that does not contradict it.
    facade = next(c for c in pod["containers"] if c["name"] == "facade")
    mount = next(m for m in facade["volumeMounts"] if m["name"] == "model-repository")
    served_dir = cluster.workspace / mount["subPath"]
    name = env_of(facade)["QWEN3_EMBED_MODEL_NAME"]
    config = served_dir / name / "config.pbtxt"
    assert config.exists(), f"the pods would wait for {config}, which no export of this release writes"
    facts = _identity(config)
    served = env_of(facade).get("QWEN3_EMBED_SERVED_MODEL_NAME", "")
    assert contradiction(served, facts) == "", f"{served} served over {facts.source_model}"
    shown = served or facts.source_model.rsplit("/", 1)[-1]  # the facade's default: the source's basename
    assert claim_of(shown) == claim_of(facts.source_model)


def publish_export(version_dir: Path, args: dict[str, str]) -> None:
    claim = claim_of(args["--model"])
    hidden = HIDDEN_SIZE_OF[claim.size] if claim else 1024
    (version_dir / args["--name"]).mkdir(parents=True, exist_ok=True)
    (version_dir / args["--name"] / "config.pbtxt").write_text(
        f'name: "{args["--name"]}"\n'
        f'parameters {{ key: "source_model" value {{ string_value: "{args["--model"]}" }} }}\n'
        f'parameters {{ key: "precision" value {{ string_value: "{args["--precision"]}" }} }}\n'
        f'parameters {{ key: "hidden_size" value {{ string_value: "{hidden}" }} }}\n'
        'parameters { key: "max_input_tokens" value { string_value: "8192" } }\n'
        'parameters { key: "embedding_rows" value { string_value: "151669" } }\n'
    )


def _identity(config: Path) -> ModelFacts:
    from export.repository import published_identity

    facts = published_identity(config.parent)
    assert facts is not None
    return facts


class Release:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.cluster = Cluster(workspace=tmp_path / "volume")

    def install(self, *layers: dict[str, Any]) -> None:
        values = merged(*layers) if layers else {}
        stated = values.get("clusterState", {}).get("modelClaim")
        if stated:  # a claim that exists before the release (existingClaim)
            self.cluster.claim = copy.deepcopy(stated)
        manifests = render_release(values, self.cluster, upgrade=False)
        apply(self.cluster, manifests, self.tmp_path, upgrade=False)
        self.cluster.revisions.append((values, manifests))

    def upgrade(self, *layers: dict[str, Any]) -> None:
        """helm upgrade --reuse-values -f/--set layers: the last revision's values with the layers over them."""
        values = merged(self.cluster.revisions[-1][0], *layers)
        manifests = render_release(values, self.cluster, upgrade=True)
        apply(self.cluster, manifests, self.tmp_path, upgrade=True)
        self.cluster.revisions.append((values, manifests))

    def rollback(self, revision: int) -> None:
        """helm rollback: the stored manifests of `revision` (1-based), not a new render."""
        values, manifests = self.cluster.revisions[revision - 1]
        apply(self.cluster, manifests, self.tmp_path, upgrade=True)
        self.cluster.revisions.append((values, manifests))


def image(tag: str) -> dict[str, Any]:
    return {"facade": {"image": {"tag": tag}}, "exportJob": {"image": {"tag": tag}}}


SHARED = {"modelRepository": RWX_CLAIM, "clusterState": {"modelClaim": {"accessModes": ["ReadWriteMany"]}}}

# The chart README's "Upgrades" table, by its path ids.
PATHS: dict[str, Any] = {
    "install-default": lambda r: r.install(),
    "install-4b": lambda r: r.install(preset("4b")),
    "install-8b": lambda r: r.install(preset("8b")),
    "default-to-4b": lambda r: (r.install(), r.upgrade(preset("4b"))),
    "4b-to-8b": lambda r: (r.install(preset("4b")), r.upgrade(preset("8b"))),
    "8b-to-4b": lambda r: (r.install(preset("8b")), r.upgrade(preset("4b"))),
    "staged-4b-to-8b": lambda r: (
        r.install(preset("4b")),
        r.upgrade(preset("8b"), {"model": {"version": "4b-fp16"}, "exportJob": {"version": "8b-bf16"}}),
        r.upgrade({"model": {"version": "8b-bf16"}, "exportJob": {"version": ""}}),
    ),
    "re-export-new-version": lambda r: (
        r.install(preset("4b")),
        r.upgrade({"exportJob": {"version": "4b-fp16-r2"}}),
        r.upgrade({"model": {"version": "4b-fp16-r2"}, "exportJob": {"version": ""}}),
    ),
    "image-only": lambda r: (r.install(preset("4b")), r.upgrade(image("0.1.1"))),
    "image-only-8b": lambda r: (r.install(preset("8b")), r.upgrade(image("0.1.1"))),
    "back-to-0.6b": lambda r: (r.install(), r.upgrade(preset("4b")), r.upgrade(preset("0.6b"))),
    "rollback": lambda r: (r.install(preset("4b")), r.upgrade(preset("8b")), r.rollback(1)),
    "rollback-after-image": lambda r: (r.install(), r.upgrade(image("0.1.1")), r.rollback(1)),
    "hook-mode-rwx": lambda r: (
        r.install(SHARED, {"exportJob": {"helmHook": True}}),
        r.upgrade(image("0.1.1")),
        r.upgrade(preset("4b")),
    ),
    "same-version-other-model": lambda r: (
        r.install(),
        r.upgrade({"exportJob": {"model": "Qwen/Qwen3-Embedding-4B", "resources": {"limits": {"memory": "32Gi"}}}}),
    ),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_upgrade_path_works_on_one_gpu_node(path: str, tmp_path: Path) -> None:
    release = Release(tmp_path)
    PATHS[path](release)
    assert release.cluster.revisions and release.cluster.log
    if path == "same-version-other-model":  # exports 4B into v1, which holds 0.6B: refused, 0.6B still served
        assert release.cluster.log[-1].endswith("refused v1")
    if path == "4b-to-8b":
        assert any("exported Qwen/Qwen3-Embedding-8B into 8b-bf16" in line for line in release.cluster.log)
    if path in {"image-only", "image-only-8b", "rollback-after-image", "back-to-0.6b"}:
        assert "skipped" in release.cluster.log[-1]  # the published version is reused, not exported again


def test_the_readme_lists_every_path_with_its_downtime() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    section = readme.split("## Upgrades", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9.-]+)` \|[^|]+\|[^|]+\| (none|load time|planned outage) \|", section, re.M)
    assert {path for path, _ in rows} == set(PATHS)
    downtime = dict(rows)
    assert downtime["re-export-new-version"] == "load time" and downtime["4b-to-8b"] == "planned outage"


# ---------------------------------------------------------------------------------------- refused, with why


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # A served name that names another model than the export source.
        ({**preset("4b"), "model": {"servedName": "Qwen3-Embedding-8B"}}, "names another model than the export"),
        # Hook mode where it would hang: a ReadWriteOnce (or unknown) claim, a GPU export.
        (
            {"modelRepository": RWX_CLAIM, "exportJob": {"helmHook": True}},
            "exportJob.helmHook needs a ReadWriteMany existingClaim",
        ),
        (
            merged(SHARED, {"exportJob": {"helmHook": True, "device": "gpu", "precision": "bf16"}}),
            "exportJob.helmHook with exportJob.device=gpu",
        ),
        # A GPU export in several pods at once, or with no GPU in the pod.
        ({**preset("8b"), "replicaCount": 2, **SHARED}, "more than one pod at install"),
        (
            {**preset("8b"), "triton": {"external": {"enabled": True, "url": "t:8001"}}},
            "with triton.external the pod has no GPU",
        ),
        # The live claim's access modes cannot change.
        (
            {
                "clusterState": {"modelClaim": {"size": "100Gi", "accessModes": ["ReadWriteOnce"]}},
                "modelRepository": {"persistence": {"accessModes": ["ReadWriteMany"]}},
            },
            "access modes cannot change",
        ),
        # An existing claim nobody stated counts as ReadWriteOnce (helm template, Argo CD: no lookup).
        (
            {"modelRepository": {"existingClaim": "models"}, "exportJob": {"enabled": False}, "replicaCount": 2},
            "with a ReadWriteOnce model volume",
        ),
        # KEDA without anything scraping the facade.
        (
            {"autoscaling": {"enabled": True}, "modelRepository": {"persistence": {"accessModes": ["ReadWriteMany"]}}},
            "needs Prometheus to scrape the facade",
        ),
    ],
    ids=lambda v: str(v)[:50],
)
def test_paths_that_cannot_work_are_refused_with_the_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render_raw(values)


@pytest.mark.parametrize(
    ("values", "api"),
    [
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, "monitoring.coreos.com/v1/ServiceMonitor"),
        (
            {
                "autoscaling": {"enabled": True, "keda": {"prometheusScrapesFacade": True}},
                "modelRepository": {"persistence": {"accessModes": ["ReadWriteMany"]}},
            },
            "keda.sh/v1alpha1/ScaledObject",
        ),
        ({"grpcRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}, "gateway.networking.k8s.io/v1/GRPCRoute"),
        ({"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}}, "gateway.networking.k8s.io/v1/HTTPRoute"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_optional_kinds_need_their_api(values: dict[str, Any], api: str) -> None:
    """A kind whose CRD the cluster lacks fails the render with what to install, not the install with "no
    matches for kind"; assumeApiVersions (or --api-versions) states it where the render cannot see the cluster."""
    with pytest.raises(helm_python.HelmError, match=re.escape(f"needs the {api} API")):
        render_raw(values, api_versions=())
    assumed = manifests_of(render_raw(merged(values, {"assumeApiVersions": [api]}), api_versions=()))
    assert any(f"{m.doc['apiVersion']}/{m.kind}" == api for m in assumed)


# ------------------------------------------------------------------------------------------ the new pieces


def test_an_existing_claim_is_rendered_as_it_is() -> None:
    """The live claim (lookup, or clusterState) wins over values: a preset or rollback never resizes it."""
    live = {"clusterState": {"modelClaim": {"size": "60Gi", "accessModes": ["ReadWriteOnce"]}}}
    for values in ({}, {"modelRepository": {"persistence": {"size": "20Gi"}}}, preset("8b")):
        pvc = only(manifests_of(render_raw(merged(values, live))), "PersistentVolumeClaim")
        assert pvc["spec"]["resources"]["requests"]["storage"] == "60Gi"
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    fresh = only(manifests_of(render_raw({})), "PersistentVolumeClaim")
    assert fresh["spec"]["resources"]["requests"]["storage"] == "100Gi"
    for size in ("0.6b", "4b", "8b"):
        assert "persistence" not in preset(size).get("modelRepository", {}), size
    notes = render_raw(merged({"modelRepository": {"persistence": {"size": "200Gi"}}}, live))
    assert "kubectl -n ml patch pvc" in notes["qwen3-embedding/templates/NOTES.txt"]


def test_no_preset_sets_a_served_name_and_each_has_its_own_version() -> None:
    versions = set()
    for size in ("0.6b", "4b", "8b"):
        values = preset(size)
        assert "servedName" not in values.get("model", {}), size
        versions.add(values.get("model", {}).get("version", "v1"))
        facade = next(
            c
            for c in only(manifests_of(render_raw(values)), "Deployment")["spec"]["template"]["spec"]["containers"]
            if c["name"] == "facade"
        )
        assert "QWEN3_EMBED_SERVED_MODEL_NAME" not in env_of(facade)
    assert len(versions) == 3


def test_the_gpu_pod_is_guaranteed() -> None:
    for values in ({}, preset("4b"), preset("8b")):
        spec = only(manifests_of(render_raw(values)), "Deployment")["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            res = c["resources"]
            assert res["requests"] == res["limits"], c["name"]
            assert {"cpu", "memory"} <= set(res["requests"]), c["name"]
    burstable = only(manifests_of(render_raw({"qosGuaranteed": False})), "Deployment")
    triton = next(c for c in burstable["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    assert triton["resources"]["requests"] != triton["resources"]["limits"]


def test_triton_probe_runs_against_a_loopback_http_server(tmp_path: Path) -> None:
    """The exec probe the chart renders for Triton, run with bash against a server on 127.0.0.1 that answers
    like Triton: 200 on the path it asks, and it fails when the server answers otherwise or is gone."""
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Triton(BaseHTTPRequestHandler):
        ready = True

        def do_GET(self) -> None:
            ok = self.path in {"/v2/health/live", "/v2/health/ready"} and (Triton.ready or self.path.endswith("live"))
            self.send_response(200 if ok else 400)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Triton)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = only(manifests_of(render_raw({"triton": {"httpPort": port}})), "Deployment")["spec"]["template"]["spec"]
    triton = next(c for c in spec["containers"] if c["name"] == "triton")

    def probe(kind: str) -> int:
        return subprocess.run(triton[kind]["exec"]["command"], timeout=10).returncode

    try:
        assert probe("readinessProbe") == 0 and probe("livenessProbe") == 0 and probe("startupProbe") == 0
        Triton.ready = False
        assert probe("readinessProbe") != 0 and probe("livenessProbe") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert probe("livenessProbe") != 0


def test_http_ingress_and_route_reach_the_openai_api() -> None:
    values = {
        "httpIngress": {"enabled": True, "host": "api.example.com", "tlsSecretName": "api-tls"},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "hostnames": ["api.example.com"]},
    }
    manifests = manifests_of(render_raw(values))
    ingress = only(manifests, "Ingress")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "api.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "http"}
    route = only(manifests, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "emb-qwen3-embedding", "port": 8080}]


def test_keda_has_a_fallback_and_treats_an_empty_query_as_an_error() -> None:
    values = {
        "autoscaling": {"enabled": True, "maxReplicas": 3},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "modelRepository": {"persistence": {"accessModes": ["ReadWriteMany"]}},
    }
    scaled = only(manifests_of(render_raw(values)), "ScaledObject")
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 3}
    assert scaled["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] == "false"
    own = merged(values, {"autoscaling": {"keda": {"fallbackReplicas": 1}}})
    assert only(manifests_of(render_raw(own)), "ScaledObject")["spec"]["fallback"]["replicas"] == 1


def test_triton_probe_passes_against_a_real_triton(triton: Any) -> None:
    """The same exec probes against a real tritonserver (the session's, with its models loaded): its HTTP
    endpoint answers the probe's HTTP/1.0 request with 200 on live and ready."""
    import subprocess

    values = {"triton": {"httpPort": triton.http_port}}
    spec = only(manifests_of(render_raw(values)), "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "triton")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        ran = subprocess.run(container[kind]["exec"]["command"], capture_output=True, text=True, timeout=10)
        assert ran.returncode == 0, (kind, ran.stderr)
    assert f"--http-port={triton.http_port}" in container["args"] and "--http-address=127.0.0.1" in container["args"]


def test_a_pod_without_a_gpu_keeps_its_burstable_cpu() -> None:
    for values in (
        {"triton": {"resources": {"limits": {"nvidia.com/gpu": None}}}, "tolerations": []},
        {"triton": {"external": {"enabled": True, "url": "t:8001"}}},
    ):
        spec = only(manifests_of(render_raw(values)), "Deployment")["spec"]["template"]["spec"]
        facade = next(c for c in spec["containers"] if c["name"] == "facade")
        assert facade["resources"]["limits"]["cpu"] == "4" and facade["resources"]["requests"]["cpu"] == "2"
    mig = {"triton": {"resources": {"limits": {"nvidia.com/gpu": None, "nvidia.com/mig-3g.40gb": 1}}}}
    spec = only(manifests_of(render_raw(mig)), "Deployment")["spec"]["template"]["spec"]
    triton = next(c for c in spec["containers"] if c["name"] == "triton")
    assert triton["resources"]["requests"] == triton["resources"]["limits"]
    assert triton["resources"]["requests"]["nvidia.com/mig-3g.40gb"] == 1
