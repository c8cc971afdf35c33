"""The Helm chart renders valid Kubernetes manifests in every mode, offline.

Rendering uses Helm's Go SDK through ``helm-python-sdk`` (no helm binary, no cluster); every
rendered manifest is validated against the Kubernetes 1.30 OpenAPI schemas with
``kubernetes-validate``. The ServiceMonitor (a CRD kind with no schema there) is checked
field by field.
"""

from __future__ import annotations

import base64
import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    from tests.realparts import require_module
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from realparts import require_module

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "streamadapt"
K8S = "1.30.0"

helm = require_module("helm_python", "pip install helm-python-sdk")
kv = require_module("kubernetes_validate", "pip install kubernetes-validate")


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Template name -> its manifests (empty templates dropped)."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name="demo", namespace="ml")
    docs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        found = [d for d in yaml.safe_load_all(text) if d]
        if found:
            docs[Path(path).name] = found
    return docs


def by_kind(docs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for found in docs.values():
        for d in found:
            assert d["kind"] not in out, f"two {d['kind']} manifests"
            out[d["kind"]] = d
    return out


def validate_all(docs: dict[str, list[dict[str, Any]]]) -> None:
    for found in docs.values():
        for d in found:
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # no schema for CRDs: checked by hand below
            kv.validate(d, K8S, strict=True)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_lint_is_clean_in_strict_mode() -> None:
    for values in ({}, {"mode": "sidecar", "sidecar": {"podSelector": {"app": "p"}}}):
        report = helm.lint(CHART, values=values, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_is_a_valid_restricted_deployment() -> None:
    docs = render()
    validate_all(docs)
    kinds = by_kind(docs)
    assert set(kinds) == {"Deployment", "Service", "ServiceAccount"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] + c["args"] == ["streamadapt", "run", "--kafka"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    assert c["resources"]["limits"] and c["resources"]["requests"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/var/lib/streamadapt/checkpoints"} <= mounts
    env = env_of(c)
    assert env["STREAMADAPT_HTTP__HOST"] == "0.0.0.0"
    assert env["STREAMADAPT_CHECKPOINT__DIR"] == "/var/lib/streamadapt/checkpoints"
    svc = kinds["Service"]
    assert svc["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]


def test_rendered_env_is_accepted_by_the_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values become STREAMADAPT_* variables that the real settings class parses back."""
    from streamadapt.settings import load_settings

    values = {"settings": {"task": "ctr", "model": "river-logreg",
                           "pipeline": {"batch_size": 64, "attribution_window_s": 120},
                           "kafka": {"input_topics": ["a", "b"], "group_id": "g",
                                     "security_protocol": "SASL_SSL",
                                     "sasl_mechanism": "SCRAM-SHA-512"},
                           "drift": {"detector": "kswin", "warmup": 2000}},
              "kafkaCredentials": {"existingSecret": "kafka-users"}}
    (c,) = by_kind(render(values))["Deployment"]["spec"]["template"]["spec"]["containers"]
    for k in [k for k in os.environ if k.startswith("STREAMADAPT_")]:
        monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
        else:  # what the kubelet would read from the Secret
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "kafka-users"
            monkeypatch.setenv(e["name"], f"from-secret-{ref['key']}")
    s = load_settings()
    assert (s.task, s.model, s.pipeline.batch_size) == ("ctr", "river-logreg", 64)
    assert s.pipeline.attribution_window_s == 120.0
    assert s.kafka.input_topics == ("a", "b") and s.kafka.group_id == "g"
    assert s.kafka.sasl_username == "from-secret-username"
    assert s.kafka.sasl_password.get_secret_value() == "from-secret-password"
    assert (s.drift.enabled, s.drift.detector, s.drift.warmup) == (True, "kswin", 2000)
    assert s.http.host == "0.0.0.0" and s.http.port == 9108


def test_created_secret_holds_credentials_and_pod_reads_them_by_reference() -> None:
    docs = render({"kafkaCredentials": {"create": True, "username": "svc",
                                        "password": "s3cr3t-pw"}})
    validate_all(docs)
    kinds = by_kind(docs)
    data = kinds["Secret"]["data"]
    assert base64.b64decode(data["password"]).decode() == "s3cr3t-pw"
    deployment = yaml.safe_dump(kinds["Deployment"])
    assert "s3cr3t-pw" not in deployment
    env = env_of(kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0])
    ref = env["STREAMADAPT_KAFKA__SASL_PASSWORD"]["secretKeyRef"]
    assert ref == {"name": kinds["Secret"]["metadata"]["name"], "key": "password"}


def test_tls_secret_is_mounted_read_only() -> None:
    docs = render({"kafkaCredentials": {"tlsSecret": "kafka-ca", "tlsClientCert": True}})
    validate_all(docs)
    kinds = by_kind(docs)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["STREAMADAPT_KAFKA__SSL_CAFILE"] == "/etc/streamadapt/kafka-tls/ca.crt"
    assert env["STREAMADAPT_KAFKA__SSL_KEYFILE"] == "/etc/streamadapt/kafka-tls/tls.key"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["streamadapt-kafka-tls"]["secret"]["secretName"] == "kafka-ca"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "streamadapt-kafka-tls"]
    assert mount["readOnly"] is True


def test_persistent_checkpoints_use_a_claim_and_recreate() -> None:
    docs = render({"checkpoints": {"persistence": {"enabled": True, "size": "5Gi",
                                                   "storageClass": "fast"}}})
    validate_all(docs)
    kinds = by_kind(docs)
    pvc = kinds["PersistentVolumeClaim"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    dep = kinds["Deployment"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    claim = vols["streamadapt-checkpoints"]["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]
    existing = by_kind(render({"checkpoints": {"persistence": {"enabled": True,
                                                               "existingClaim": "mine"}}}))
    assert "PersistentVolumeClaim" not in existing
    vols = {v["name"]: v for v in existing["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["streamadapt-checkpoints"]["persistentVolumeClaim"]["claimName"] == "mine"


APP = {  # an existing stream processor to which the sidecar is added
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "processor"},
    "spec": {"selector": {"matchLabels": {"app": "processor"}},
             "template": {"metadata": {"labels": {"app": "processor"}},
                          "spec": {"containers": [{"name": "app", "image": "processor:1"}]}}},
}


def _apply_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic merge of the sidecar patch: lists of named items merge by name."""
    out = copy.deepcopy(target)
    src = patch["spec"]["template"]["spec"]
    dst = out["spec"]["template"]["spec"]
    for key, items in src.items():
        names = {i["name"] for i in items}
        dst[key] = [i for i in dst.get(key, []) if i["name"] not in names] + items
    return out


@pytest.mark.parametrize("native", [False, True])
def test_sidecar_renders_a_container_that_fits_an_existing_pod(native: bool) -> None:
    docs = render({"mode": "sidecar", "sidecar": {"podSelector": {"app": "processor"},
                                                  "target": {"name": "processor"},
                                                  "native": native}})
    validate_all(docs)
    kinds = by_kind(docs)
    assert "Deployment" not in kinds and "ServiceAccount" not in kinds
    assert kinds["Service"]["spec"]["selector"] == {"app": "processor"}
    data = kinds["ConfigMap"]["data"]
    container = yaml.safe_load(data["container.yaml"])
    volumes = yaml.safe_load(data["volumes.yaml"])
    patched = _apply_patch(APP, yaml.safe_load(data["patch.yaml"]))
    kv.validate(patched, K8S, strict=True)
    spec = patched["spec"]["template"]["spec"]
    key = "initContainers" if native else "containers"
    assert [c["name"] for c in spec[key]][-1] == "streamadapt"
    assert spec[key][-1] == container
    assert spec["volumes"] == volumes
    assert (container.get("restartPolicy") == "Always") is native
    assert spec["containers"][0]["name"] == "app"
    assert "securityContext" not in spec  # the app's pod-level settings are left alone


def test_sidecar_without_pod_selector_fails_with_a_clear_message() -> None:
    with pytest.raises(helm.HelmRenderError, match="sidecar.podSelector"):
        render({"mode": "sidecar"})


@pytest.mark.parametrize(("enabled", "rendered"), [(True, True), (False, False),
                                                   ("auto", False)])
def test_service_monitor_is_gated(enabled: bool | str, rendered: bool) -> None:
    """"auto" needs monitoring.coreos.com/v1, which an offline render does not have."""
    kinds = by_kind(render({"serviceMonitor": {"enabled": enabled, "interval": "30s",
                                               "labels": {"release": "kube-prometheus"}}}))
    assert ("ServiceMonitor" in kinds) is rendered
    if not rendered:
        return
    sm = kinds["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    svc = kinds["Service"]
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"][k] == v
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert (ep["path"], ep["interval"], ep["scrapeTimeout"]) == ("/metrics", "30s", "10s")


def test_service_monitor_template_is_gated_on_the_api() -> None:
    text = (CHART / "templates" / "servicemonitor.yaml").read_text()
    assert '.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"' in text


@pytest.mark.parametrize(
    ("values", "path", "hint"),
    [
        ({"mode": "sidcar"}, "/mode", "standalone"),
        ({"replicas": -1}, "/replicas", "minimum"),
        ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled", "auto"),
        ({"settings": {"task": "vision"}}, "/settings/task", "forecast"),
        ({"settings": {"kafka": {"security_protocol": "TLS"}}},
         "/settings/kafka/security_protocol", "SASL_SSL"),
        ({"settings": {"pipeline": {"batch_size": 0}}}, "/settings/pipeline/batch_size",
         "minimum"),
        ({"http": {"port": 70000}}, "/http/port", "maximum"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "IfNotPresent"),
        ({"checkpoints": {"persistence": {"size": "lots"}}},
         "/checkpoints/persistence/size", "pattern"),
        ({"replica": 2}, "", "'replica' not allowed"),
    ],
)
def test_schema_rejects_bad_values_naming_the_path(values: dict, path: str, hint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    msg = str(err.value)
    assert f"at '{path}'" in msg, msg
    assert hint in msg, msg


@pytest.mark.parametrize(
    ("values", "hint"),
    [
        ({"settings": {"kafka": {"sasl_password": "x"}}}, "kafkaCredentials"),
        ({"settings": {"http": {"port": 1}}}, "http.port"),
        ({"settings": {"checkpoint": {"dir": "/x"}}}, "checkpoints.mountPath"),
        ({"kafkaCredentials": {"create": True}}, "kafkaCredentials.username"),
    ],
)
def test_misplaced_settings_fail_with_the_right_place(values: dict, hint: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(hint)):
        render(values)


def test_dockerfile_matches_the_chart() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    with helm.Chart.load(CHART) as chart:
        values = chart.values
    user = re.search(r"^USER (\d+):(\d+)$", docker, re.M)
    assert user, "the image must run as a numeric non-root user"
    assert int(user.group(1)) == values["securityContext"]["runAsUser"] != 0
    assert int(user.group(2)) == values["securityContext"]["runAsGroup"]
    assert re.search(rf"^EXPOSE {values['http']['port']}$", docker, re.M)
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", docker, re.M).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", docker, re.M).group(1))
    assert entry == values["command"] and cmd == values["args"]
    assert values["checkpoints"]["mountPath"] in docker
    assert "torch==2.13.0" in docker and "download.pytorch.org/whl/cpu" in docker


def test_prometheus_rule_carries_the_shipped_alerts() -> None:
    shipped = ROOT / "deploy" / "prometheus" / "streamadapt-rules.yaml"
    copy_in_chart = CHART / "files" / "streamadapt-rules.yaml"
    assert copy_in_chart.read_text() == shipped.read_text(), (
        "helm/streamadapt/files/streamadapt-rules.yaml must be a copy of "
        "deploy/prometheus/streamadapt-rules.yaml")
    assert "PrometheusRule" not in by_kind(render())  # "auto": no monitoring API offline
    rule = by_kind(render({"prometheusRule": {"enabled": True,
                                              "labels": {"release": "kp"}}}))["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kp"
    assert rule["spec"] == yaml.safe_load(shipped.read_text())
