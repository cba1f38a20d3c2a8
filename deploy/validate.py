"""Offline checks of deploy/ (run through deploy/validate.sh, which installs what this needs).

- deploy/config/config.toml: TOML, only the keys the agent knows, the right types.
- The Helm chart: `helm lint --strict`, then rendered (Helm's own Go engine, through
  helm-python-sdk) with several value sets, with and without the Prometheus Operator's API
  (`--api-versions monitoring.coreos.com/v1`: monitors are on only where it exists or when
  asked); every rendered object and every object in
  deploy/manifests/*.yaml is validated offline and strictly (unknown fields are errors):
  Kubernetes kinds against the OpenAPI-derived schemas bundled in kubernetes-validate, for the
  oldest and the newest Kubernetes version it bundles; PodMonitor/ServiceMonitor against
  deploy/schemas/*.json (a strict subset written for the fields we use: the validator has no
  CRD schemas).
- The config.toml in the chart's ConfigMap and in deploy/manifests/03-configmap.yaml is
  byte-identical to deploy/config/config.toml.
- deploy/manifests/ is the chart rendered with default values (release and namespace
  "inferscope") on a cluster with the Operator's API, up to labels and annotations.

One line per file checked; exit status 1 on any failure.
`--sync` rewrites the config copy in deploy/manifests/03-configmap.yaml first.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

import helm_python as helm
from helm_python import _native as helm_native
import kubernetes_validate
import kubernetes_validate.utils as kv_utils

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "inferscope"
CONFIG = DEPLOY / "config" / "config.toml"
MANIFESTS = DEPLOY / "manifests"
CONFIGMAP_MANIFEST = MANIFESTS / "03-configmap.yaml"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): DEPLOY / "schemas" / "podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): DEPLOY / "schemas" / "servicemonitor.json",
}
_versions = sorted(set(kv_utils.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
K8S_VERSIONS = [_versions[0], _versions[-1]]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

# The agent's config keys and TOML types (agent/src/daemon/config.rs; it denies unknown fields).
TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "listen": str,
    "reconcile_seconds": (int, float),
    "max_series": int,
    "max_targets": int,
    "max_models_per_target": int,
    "ring_buffer_bytes": int,
    "gpu_sample_hz": (int, float),
    "nvml_library": str,
    "series_grace_seconds": (int, float),
    "kubernetes": str,
    "kubernetes_max_pods": int,
    "uprobe_linger_seconds": (int, float),
    "follow_workers": bool,
    "stream_idle_timeout_seconds": (int, float),
    "capture": str,
    "metrics_bearer_token_file": str,
    "rule": list,
}
OPTIONAL_KEYS = {
    "max_models_per_target",
    "nvml_library",
    "series_grace_seconds",
    "kubernetes",
    "kubernetes_max_pods",
    "uprobe_linger_seconds",
    "follow_workers",
    "stream_idle_timeout_seconds",
    "capture",
    "metrics_bearer_token_file",
}
# Old rule keys the agent still accepts (deprecated) → their names now.
DEPRECATED_RULE_KEYS = {"profile": "stage_set"}
KUBERNETES_MODES = {"auto", "on", "off"}
CAPTURE_MODES = {"auto", "socket", "syscalls"}
RULE_KEYS = {
    "name": str,
    "comm": list,
    "exe": list,
    "cmdline": list,
    "ports": list,
    "pod_labels": dict,
    "stage_set": str,
    "service": str,
}

failures = 0


def ok(what: str, detail: str) -> None:
    print(f"ok    {what:<52} {detail}")


def fail(what: str, why: str) -> None:
    global failures
    failures += 1
    print(f"FAIL  {what:<52} {why}")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# --- YAML that refuses duplicate keys (the API server's strict decoding does too) ---------------


class StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d is not None]


# --- Helm, with the Go library's stderr chatter kept unless something fails ---------------------


@contextlib.contextmanager
def quiet_stderr() -> Iterator[list[str]]:
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


# What `helm template --api-versions monitoring.coreos.com/v1` tells the chart: a cluster with the
# Prometheus Operator's API.
OPERATOR_API = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/ServiceMonitor"]


def render(
    values: dict[str, Any], name: str = "inferscope", namespace: str = "inferscope", api_versions: list[str] | None = None
) -> dict[str, str]:
    """Renders offline; `api_versions` are the extra APIs the cluster serves (Helm's
    `--api-versions`, passed to the SDK's render options, which its Python wrapper leaves out)."""
    with quiet_stderr():
        with helm.Chart.load(CHART) as chart:
            if not api_versions:
                return chart.render(values, name=name, namespace=namespace, is_install=True)
            opts = {"name": name, "namespace": namespace, "is_install": True, "api_versions": api_versions}
            out = helm_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
            return json.loads(out)


# --- checks -----------------------------------------------------------------------------------


def check_config() -> bytes:
    raw = CONFIG.read_bytes()
    what = rel(CONFIG)
    try:
        cfg = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        fail(what, f"not TOML: {e}")
        return raw
    problems = []
    for k, v in cfg.items():
        if k not in TOP_KEYS:
            problems.append(f"unknown key {k!r}")
        elif not isinstance(v, TOP_KEYS[k]) or isinstance(v, bool):
            problems.append(f"{k} has the wrong type ({type(v).__name__})")
    for k in TOP_KEYS:
        if k not in cfg and k not in OPTIONAL_KEYS:
            problems.append(f"missing {k!r}")
    if cfg.get("kubernetes", "auto") not in KUBERNETES_MODES:
        problems.append(f"kubernetes must be one of {sorted(KUBERNETES_MODES)}")
    if cfg.get("capture", "auto") not in CAPTURE_MODES:
        problems.append(f"capture must be one of {sorted(CAPTURE_MODES)}")
    rules = cfg.get("rule", [])
    names = set()
    for i, r in enumerate(rules):
        label = f"rule[{i}] {r.get('name', '?')!r}"
        keys = set()
        for k, v in r.items():
            new = DEPRECATED_RULE_KEYS.get(k, k)
            if new not in RULE_KEYS:
                problems.append(f"{label}: unknown key {k!r}")
            elif new in keys:
                problems.append(f"{label}: {new} given twice (once as {k!r}, its deprecated name)")
            elif not isinstance(v, RULE_KEYS[new]):
                problems.append(f"{label}: {k} must be {RULE_KEYS[new].__name__}")
            keys.add(new)
        missing = set(RULE_KEYS) - keys
        if missing:
            problems.append(f"{label}: missing {sorted(missing)}")
        for k in ("comm", "exe", "cmdline"):
            if not all(isinstance(g, str) and g for g in r.get(k, [])):
                problems.append(f"{label}: {k} must hold non-empty strings")
        if not all(isinstance(p, int) and 0 < p < 65536 for p in r.get("ports", [])):
            problems.append(f"{label}: ports must be TCP port numbers")
        if not all(isinstance(v, str) for v in r.get("pod_labels", {}).values()):
            problems.append(f"{label}: pod_labels values must be strings")
        if not any(r.get(k) for k in ("comm", "exe", "cmdline", "ports", "pod_labels")):
            problems.append(f"{label}: no condition, it would match every process")
        if r.get("name") in names:
            problems.append(f"{label}: duplicate name")
        names.add(r.get("name"))
    if not str(cfg.get("listen", "")).endswith(":9464"):
        problems.append("listen must be on port 9464 (the chart's metrics.port and the manifests' containerPort)")
    if problems:
        fail(what, "; ".join(problems))
    else:
        ok(what, f"TOML, agent keys and types, {len(rules)} rules: {', '.join(sorted(names))}")
    return raw


def validate_object(doc: dict) -> str | None:
    """None when valid, else the reason."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return "not a Kubernetes object (no apiVersion/kind)"
    key = (doc["apiVersion"], doc["kind"])
    meta = doc.get("metadata") or {}
    if doc["kind"] in CLUSTER_SCOPED:
        if "namespace" in meta:
            return f"{doc['kind']} is cluster-scoped but has a namespace"
    elif not meta.get("namespace"):
        return f"{doc['kind']}/{meta.get('name')} has no namespace"
    if key in CRD_SCHEMAS:
        schema = json.loads(CRD_SCHEMAS[key].read_text())
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            return "; ".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors)
        return None
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path)) or "<root>"
            return f"k8s {v}: {path}: {e.message}"
        except kubernetes_validate.SchemaNotFoundError:
            return f"no schema for {key[1]} {key[0]} (k8s {v}) and none in deploy/schemas/"
    return None


def how(docs: list[dict]) -> str:
    crd = any((d["apiVersion"], d["kind"]) in CRD_SCHEMAS for d in docs)
    k8s = any((d["apiVersion"], d["kind"]) not in CRD_SCHEMAS for d in docs)
    parts = []
    if k8s:
        parts.append(f"k8s {'+'.join(v.rsplit('.', 1)[0] for v in K8S_VERSIONS)} strict")
    if crd:
        parts.append("deploy/schemas strict")
    return ", ".join(parts)


def check_file(what: str, text: str) -> list[dict]:
    try:
        docs = load_docs(text)
    except yaml.YAMLError as e:
        fail(what, f"YAML: {e}")
        return []
    if not docs:
        fail(what, "no objects")
        return []
    reasons = [r for r in (validate_object(d) for d in docs) if r]
    if reasons:
        fail(what, " | ".join(reasons))
    else:
        names = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        ok(what, f"{names} ({how(docs)})")
    return docs


def configmap_config(docs: list[dict]) -> str | None:
    for d in docs:
        if d.get("kind") == "ConfigMap":
            return (d.get("data") or {}).get("config.toml")
    return None


def check_config_copy(what: str, docs: list[dict], raw: bytes) -> None:
    got = configmap_config(docs)
    if got is None:
        fail(what, "no ConfigMap with data.config.toml")
    elif got.encode() != raw:
        a, b = got.encode(), raw
        at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        line = raw[:at].count(b"\n") + 1
        fail(what, f"config.toml differs from {rel(CONFIG)} (first difference on line {line}); run: bash deploy/validate.sh --sync")
    else:
        ok(what, f"config.toml byte-identical to {rel(CONFIG)} ({len(raw)} bytes)")


def lint() -> None:
    what = rel(CHART) + " (helm lint --strict)"
    with quiet_stderr() as log:
        report = helm.lint(CHART, strict=True)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if bad:
        fail(what, "; ".join(str(m) for m in bad) + ("\n" + log[0] if log and log[0] else ""))
    else:
        infos = [m["error"] for m in report.get("messages", [])]
        ok(what, "no warnings or errors" + (f" (info: {'; '.join(infos)})" if infos else ""))


SCENARIOS: list[tuple[str, str, bool, set[str], set[str]]] = [
    # (name, --set string, cluster serves the Operator's API, expected kinds present, kinds absent)
    ("defaults", "", True, {"PodMonitor", "Service", "DaemonSet", "ConfigMap"}, {"ServiceMonitor"}),
    ("defaults, no operator API", "", False, {"Service", "DaemonSet"}, {"PodMonitor", "ServiceMonitor"}),
    ("podmonitor asked, no operator API", "podMonitor.enabled=true", False, {"PodMonitor"}, {"ServiceMonitor"}),
    ("monitors off", "podMonitor.enabled=false", True, {"DaemonSet"}, {"PodMonitor", "ServiceMonitor"}),
    (
        "servicemonitor",
        "podMonitor.enabled=false,serviceMonitor.enabled=true",
        False,
        {"ServiceMonitor", "Service"},
        {"PodMonitor"},
    ),
    (
        "privileged+nvidia",
        "securityContext.privileged=true,securityContext.extraCapabilities={SYS_ADMIN},nvidia.enabled=true,"
        "nvidia.runtimeClassName=nvidia,priorityClassName=system-node-critical,hostMounts.debugfs=true,"
        "podMonitor.labels.release=kube-prometheus-stack,podMonitor.scrapeTimeout=10s",
        True,
        {"PodMonitor", "DaemonSet"},
        set(),
    ),
    (
        "extras",
        "existingConfigMap=my-config,extraArgs={--verbose},image.digest=sha256:"
        + "0" * 64
        + ",extraVolumes[0].name=token,extraVolumes[0].secret.secretName=scrape-token,"
        "extraVolumeMounts[0].name=token,extraVolumeMounts[0].mountPath=/var/run/token,"
        "podMonitor.relabelings[0].targetLabel=cluster,podMonitor.relabelings[0].replacement=prod,"
        "podMonitor.metricRelabelings[0].action=drop,podMonitor.metricRelabelings[0].regex=process_.*",
        True,
        {"PodMonitor", "DaemonSet"},
        {"ConfigMap"},
    ),
]


def daemonset(docs: list[dict]) -> dict | None:
    return next((d for d in docs if d.get("kind") == "DaemonSet"), None)


def check_chart(raw: bytes) -> list[dict]:
    lint()
    default_docs: list[dict] = []
    for name, sets, operator_api, present, absent in SCENARIOS:
        values = helm.parse_set_string(sets) if sets else {}
        label = f"chart[{name}]" + (f" --set {sets}" if sets else "")
        label += " --api-versions monitoring.coreos.com/v1" if operator_api else ""
        try:
            out = render(values, api_versions=OPERATOR_API if operator_api else None)
        except helm.HelmError as e:
            fail(label, f"render failed: {e}")
            continue
        print(f"--    {label}")
        docs_all: list[dict] = []
        for tpl in sorted(out):
            if tpl.endswith("NOTES.txt"):
                continue
            try:
                if not load_docs(out[tpl]):
                    continue  # a template switched off by its values
            except yaml.YAMLError:
                pass  # check_file reports it
            docs_all += check_file(f"  {tpl}", out[tpl])
        kinds = {d["kind"] for d in docs_all}
        if not present <= kinds or kinds & absent:
            fail(label, f"kinds {sorted(kinds)}: expected {sorted(present)} and none of {sorted(absent)}")
        if name == "defaults":
            default_docs = docs_all
            check_config_copy("  chart ConfigMap", docs_all, raw)
        if name == "privileged+nvidia" and daemonset(docs_all):
            c = daemonset(docs_all)["spec"]["template"]["spec"]["containers"][0]
            sc = c["securityContext"]
            env = {e["name"] for e in c.get("env", [])}
            problems = []
            if "allowPrivilegeEscalation" in sc:
                problems.append("allowPrivilegeEscalation set with privileged/SYS_ADMIN (the API refuses it)")
            if "SYS_ADMIN" not in sc["capabilities"]["add"] or not sc.get("privileged"):
                problems.append("privileged/SYS_ADMIN not applied")
            if not {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"} <= env:
                problems.append("NVIDIA env missing")
            if problems:
                fail("  DaemonSet (privileged+nvidia)", "; ".join(problems))
        if name == "extras" and daemonset(docs_all):
            spec = daemonset(docs_all)["spec"]["template"]["spec"]
            c = spec["containers"][0]
            pm = next(d for d in docs_all if d["kind"] == "PodMonitor")["spec"]["podMetricsEndpoints"][0]
            problems = []
            if c["args"][-1] != "--verbose":
                problems.append(f"extraArgs not appended: {c['args']}")
            if not c["image"].endswith("@sha256:" + "0" * 64):
                problems.append(f"image digest not used: {c['image']}")
            if {"name": "token", "mountPath": "/var/run/token"} not in c["volumeMounts"]:
                problems.append("extraVolumeMounts missing")
            vols = {v["name"]: v for v in spec["volumes"]}
            if "token" not in vols or vols["config"]["configMap"]["name"] != "my-config":
                problems.append("extraVolumes or existingConfigMap not applied")
            if len(pm["relabelings"]) != 2 or pm.get("metricRelabelings", [{}])[0].get("action") != "drop":
                problems.append("monitor relabelings not appended")
            if problems:
                fail("  DaemonSet/PodMonitor (extras)", "; ".join(problems))
    # A ServiceMonitor without its Service must not render.
    try:
        render(helm.parse_set_string("serviceMonitor.enabled=true,service.enabled=false"))
        fail("chart[servicemonitor without service]", "rendered; expected a failure")
    except helm.HelmError:
        ok("chart[servicemonitor without service]", "refused, as it should be")
    return default_docs


def defaults_security(docs: list[dict], what: str) -> None:
    """The settings the lead asked for, checked where a schema cannot."""
    ds = daemonset(docs)
    if ds is None:
        fail(what, "no valid DaemonSet to check")
        return
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = c["securityContext"]
    want_caps = ["BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE", "DAC_READ_SEARCH"]
    env = {e["name"]: e for e in c.get("env", [])}
    problems = []
    if pod.get("hostPID") is not True:
        problems.append("hostPID")
    if sc.get("privileged") or sc["capabilities"].get("drop") != ["ALL"] or sc["capabilities"].get("add") != want_caps:
        problems.append(f"capabilities {sc.get('capabilities')}")
    if sc.get("readOnlyRootFilesystem") is not True or sc.get("runAsUser") != 0:
        problems.append("readOnlyRootFilesystem/runAsUser")
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        problems.append("NODE_NAME from spec.nodeName")
    if c["livenessProbe"]["httpGet"] != {"path": "/healthz", "port": "metrics"} or c["readinessProbe"]["httpGet"] != {"path": "/readyz", "port": "metrics"}:
        problems.append("probes")
    if c["ports"] != [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]:
        problems.append("metrics port")
    if c["args"] != ["agent", "--config", "/etc/inferscope/config.toml"]:
        problems.append("args")
    if {"operator": "Exists"} not in pod.get("tolerations", []):
        problems.append("tolerations")
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
    if mounts.get("/sys/kernel/tracing") is not False or mounts.get("/sys/fs/cgroup") is not True or "/tmp" not in mounts:
        problems.append(f"mounts {mounts}")
    if problems:
        fail(what, "DaemonSet: " + ", ".join(problems))
    else:
        ok(what, "DaemonSet: hostPID, caps drop ALL + " + "/".join(want_caps) + ", read-only root, NODE_NAME, probes, mounts")


def strip_meta(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: strip_meta(v) for k, v in x.items() if k != "metadata"}
    if isinstance(x, list):
        return [strip_meta(v) for v in x]
    return x


def first_diff(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k} only in {'chart' if k in a else 'manifest'}"
            d = first_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items in the chart, {len(b)} in the manifest"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if a == b:
        return None
    short = lambda v: (repr(v)[:60] + "...") if len(repr(v)) > 63 else repr(v)  # noqa: E731
    return f"{path}: chart {short(a)}, manifest {short(b)}"


def check_manifests(raw: bytes, chart_docs: list[dict]) -> None:
    files = sorted(MANIFESTS.glob("*.yaml"))
    if not files:
        fail(rel(MANIFESTS), "no *.yaml")
        return
    all_docs: list[tuple[Path, dict]] = []
    for f in files:
        docs = check_file(rel(f), f.read_text())
        all_docs += [(f, d) for d in docs]
    docs_only = [d for _, d in all_docs]
    check_config_copy(rel(CONFIGMAP_MANIFEST), load_docs(CONFIGMAP_MANIFEST.read_text()), raw)
    defaults_security(docs_only, rel(MANIFESTS / "04-daemonset.yaml"))
    if chart_docs:
        defaults_security(chart_docs, "chart[defaults] daemonset.yaml")
    # Same objects as the chart with default values, up to labels and annotations.
    namespaces = [d["metadata"]["name"] for d in docs_only if d["kind"] == "Namespace"]
    chart_by_key = {(d["kind"], d["metadata"]["name"]): d for d in chart_docs}
    problems = []
    for f, d in all_docs:
        ns = d["metadata"].get("namespace")
        if ns and ns not in namespaces:
            problems.append(f"{f.name}: namespace {ns} is not created in {rel(MANIFESTS)}")
        if d["kind"] == "Namespace":
            continue
        c = chart_by_key.pop((d["kind"], d["metadata"]["name"]), None)
        if c is None:
            problems.append(f"{f.name}: {d['kind']}/{d['metadata']['name']} not in the chart's output")
            continue
        diff = first_diff(strip_meta(c), strip_meta(d))
        if diff:
            problems.append(f"{f.name}: {d['kind']} differs from the chart: {diff}")
    for kind, name in chart_by_key:
        problems.append(f"chart's {kind}/{name} is missing from {rel(MANIFESTS)}")
    what = f"{rel(MANIFESTS)} vs chart[defaults]"
    if problems:
        fail(what, "; ".join(problems))
    else:
        ok(what, "same objects and specs, up to labels and annotations")


def sync() -> None:
    lines = CONFIGMAP_MANIFEST.read_text().splitlines(keepends=True)
    head = []
    for line in lines:
        head.append(line)
        if line.rstrip() == "  config.toml: |":
            break
    else:
        sys.exit(f"{rel(CONFIGMAP_MANIFEST)}: no '  config.toml: |' line")
    body = "".join(("    " + l) if l.strip() else l for l in CONFIG.read_text().splitlines(keepends=True))
    CONFIGMAP_MANIFEST.write_text("".join(head) + body)
    print(f"synced {rel(CONFIGMAP_MANIFEST)} from {rel(CONFIG)}")


def check_dockerfile() -> None:
    """What a docker build needs from the tree (no daemon here to run one)."""
    df = DEPLOY / "Dockerfile"
    problems = []
    for line in df.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for src in words[1:-1]:
                if src != "." and not (ROOT / src).exists():
                    problems.append(f"COPY source {src} does not exist")
    if 'ENTRYPOINT ["/usr/local/bin/inferscope"]' not in df.read_text():
        problems.append("ENTRYPOINT is not the inferscope binary")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    if "**/target" not in ignore:
        problems.append("Dockerfile.dockerignore does not exclude **/target")
    if problems:
        fail(rel(df), "; ".join(problems))
    else:
        ok(rel(df), "COPY sources exist, target/ excluded from the context (not built: no Docker daemon)")


def main() -> int:
    if "--sync" in sys.argv[1:]:
        sync()
    print(
        f"helm-python-sdk {helm.helm_c_version()} (Helm SDK {helm.helm_sdk_version()}), "
        f"kubernetes-validate {importlib.metadata.version('kubernetes-validate')} "
        f"(schemas for k8s {K8S_VERSIONS[0]} .. {K8S_VERSIONS[-1]})"
    )
    raw = check_config()
    chart_docs = check_chart(raw)
    check_manifests(raw, chart_docs)
    check_dockerfile()
    print(f"deploy: {failures} failure(s)" if failures else "deploy: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
