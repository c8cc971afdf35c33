"""The Helm chart renders valid Kubernetes manifests in every mode, offline.

Rendering uses Helm's Go SDK through ``helm-python-sdk`` (no helm binary, no cluster); every
rendered manifest is validated against the Kubernetes 1.30 OpenAPI schemas with
``kubernetes-validate``. The ServiceMonitor (a CRD kind with no schema there) is checked
field by field. The example chart helm/examples/link-processor, which lists streamadapt as a
dependency and includes its sidecar templates in its own pod, is rendered with that
dependency resolved by Helm (``file://`` repository) in a temporary copy.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

try:
    from tests.realparts import require_module
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from realparts import require_module

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "streamadapt"
EXAMPLE = ROOT / "helm" / "examples" / "link-processor"
K8S = "1.30.0"


def _module(name: str, hint: str) -> ModuleType:
    """``require_module`` at import time: a missing part skips this module (or fails it)."""
    try:
        return require_module(name, hint)
    except pytest.skip.Exception as exc:
        pytest.skip(exc.msg, allow_module_level=True)


helm = _module("helm_python", "pip install helm-python-sdk")
kv = _module("kubernetes_validate", "pip install kubernetes-validate")


def render(values: dict[str, Any] | None = None, chart_dir: Path = CHART,
           name: str = "demo") -> dict[str, list[dict[str, Any]]]:
    """Template path -> its manifests (empty templates dropped)."""
    with helm.Chart.load(chart_dir) as chart:
        out = chart.render(values or {}, name=name, namespace="ml")
    docs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        found = [d for d in yaml.safe_load_all(text) if d]
        if found:
            docs[path] = found
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


def pod_of(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return kinds["Deployment"]["spec"]["template"]["spec"]


def sidecar_of(pod: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The streamadapt container of a pod spec, and whether it is a native sidecar."""
    for key in ("containers", "initContainers"):
        for c in pod.get(key, []):
            if c["name"] == "streamadapt":
                return c, key == "initContainers"
    raise AssertionError("no streamadapt container in the pod")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and k in out else v
    return out


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example chart with its streamadapt dependency built into charts/.

    The chart and the example are copied with their relative layout, so the example's
    ``file://../../streamadapt`` repository resolves to the copy of this chart; Helm packages
    it into the example's charts/ and writes Chart.lock there, not in the working tree.
    """
    root = tmp_path_factory.mktemp("helm")
    skip = shutil.ignore_patterns("charts", "Chart.lock", "__pycache__")
    shutil.copytree(CHART, root / CHART.relative_to(CHART.parent), ignore=skip)
    dest = root / EXAMPLE.relative_to(CHART.parent)
    shutil.copytree(EXAMPLE, dest, ignore=skip)
    helm.dependency_update(dest)
    deps = helm.dependency_list(dest)
    assert [(d["name"], d["status"]) for d in deps] == [("streamadapt", "ok")], deps
    return dest


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


def test_checkpoint_hmac_key_is_read_from_a_secret_by_reference(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoints.hmacKey maps a key of an existing Secret to
    STREAMADAPT_CHECKPOINT__HMAC_KEY (in its own pod and in the sidecar container); the
    settings read it back as a secret; a plain value in settings is refused."""
    from streamadapt.settings import load_settings

    plain = env_of(pod_of(by_kind(render()))["containers"][0])
    assert "STREAMADAPT_CHECKPOINT__HMAC_KEY" not in plain
    signing = {"checkpoints": {"hmacKey": {"existingSecret": "ckpt-signing",
                                           "secretKey": "key"}}}
    docs = render(signing)
    validate_all(docs)
    (c,) = pod_of(by_kind(docs))["containers"]
    ref = env_of(c)["STREAMADAPT_CHECKPOINT__HMAC_KEY"]["secretKeyRef"]
    assert ref == {"name": "ckpt-signing", "key": "key"}
    sidecar = by_kind(render(deep_merge(signing, {"mode": "sidecar",
                                                  "sidecar": {"podSelector": {"app": "p"}}})))
    container = yaml.safe_load(sidecar["ConfigMap"]["data"]["container.yaml"])
    assert env_of(container)["STREAMADAPT_CHECKPOINT__HMAC_KEY"]["secretKeyRef"] == ref
    for k in [k for k in os.environ if k.startswith("STREAMADAPT_")]:
        monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    key = "0123456789abcdef" * 2  # what the kubelet would read from the Secret
    monkeypatch.setenv("STREAMADAPT_CHECKPOINT__HMAC_KEY", key)
    s = load_settings()
    assert s.checkpoint.hmac_key.get_secret_value() == key
    assert key not in repr(s) and key not in str(s.checkpoint)
    with pytest.raises(helm.HelmRenderError,
                       match=re.escape("checkpoints.hmacKey.existingSecret")):
        render({"settings": {"checkpoint": {"hmac_key": "plain-text-key-000"}}})
    with pytest.raises(helm.HelmValuesError, match=re.escape("at '/checkpoints/hmacKey'")):
        render({"checkpoints": {"hmacKey": {"secret": "x"}}})


def notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="demo", namespace="ml")
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def test_kafka_state_store_needs_no_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoints.store=kafka keeps state in a compacted topic: no checkpoint volume, claim
    or Recreate strategy, in its own pod and as a sidecar; the settings parse it back."""
    from streamadapt.settings import load_settings

    values = {"replicas": 3,
              "checkpoints": {"store": "kafka", "persistence": {"enabled": True}},
              "settings": {"checkpoint": {"topic": "links.state"}}}
    docs = render(values)
    validate_all(docs)
    kinds = by_kind(docs)
    assert set(kinds) == {"Deployment", "Service", "ServiceAccount"}  # no claim
    dep = kinds["Deployment"]
    assert dep["spec"]["replicas"] == 3 and "strategy" not in dep["spec"]
    pod = pod_of(kinds)
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["STREAMADAPT_CHECKPOINT__STORE"] == "kafka"
    assert "STREAMADAPT_CHECKPOINT__DIR" not in env
    assert [m["name"] for m in c["volumeMounts"]] == ["streamadapt-tmp"]
    assert [v["name"] for v in pod["volumes"]] == ["streamadapt-tmp"]
    for k in [k for k in os.environ if k.startswith("STREAMADAPT_")]:
        monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    s = load_settings()
    assert (s.checkpoint.store, s.checkpoint.topic, s.checkpoint.dir) == (
        "kafka", "links.state", None)
    sidecar = by_kind(render(deep_merge(values, {"mode": "sidecar",
                                                 "sidecar": {"podSelector": {"app": "p"}}})))
    data = sidecar["ConfigMap"]["data"]
    assert [v["name"] for v in yaml.safe_load(data["volumes.yaml"])] == ["streamadapt-tmp"]
    assert env_of(yaml.safe_load(data["container.yaml"]))["STREAMADAPT_CHECKPOINT__STORE"] == (
        "kafka")
    # Checkpoints off: neither store nor volume.
    off = env_of(pod_of(by_kind(render({"checkpoints": {"enabled": False,
                                                         "store": "kafka"}})))["containers"][0])
    assert not {"STREAMADAPT_CHECKPOINT__STORE", "STREAMADAPT_CHECKPOINT__DIR"} & set(off)


def test_delivery_settings_render_and_parse_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamadapt.settings import load_settings

    values = {"settings": {"kafka": {"acks": 1, "enable_idempotence": False}}}
    (c,) = pod_of(by_kind(render(values)))["containers"]
    for k in [k for k in os.environ if k.startswith("STREAMADAPT_")]:
        monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    k = load_settings().kafka
    assert (k.acks, k.enable_idempotence) == ("1", False)


def test_notes_recommend_the_kafka_store_for_replicas_without_a_shared_volume() -> None:
    assert "checkpoints.store=kafka" in notes({"replicas": 2})
    assert "WARNING" not in notes({"replicas": 2, "checkpoints": {"store": "kafka"}})
    assert "WARNING" not in notes({})  # one replica shares nothing
    shared = {"replicas": 2, "checkpoints": {"persistence": {
        "enabled": True, "accessModes": ["ReadWriteMany"]}}}
    assert "WARNING" not in notes(shared)


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


APP_CONTAINER = {"name": "app", "image": "processor:1",
                 "ports": [{"name": "http", "containerPort": 8080}]}


@pytest.mark.parametrize("native", [False, True])
def test_sidecar_mode_alone_renders_a_ready_made_patch(native: bool) -> None:
    """Installed on its own, sidecar mode renders the container, its volumes and a patch."""
    docs = render({"mode": "sidecar", "sidecar": {"podSelector": {"app": "processor"},
                                                  "target": {"name": "processor"},
                                                  "native": native}})
    validate_all(docs)
    kinds = by_kind(docs)
    assert set(kinds) == {"ConfigMap", "Service"}
    assert kinds["Service"]["spec"]["selector"] == {"app": "processor"}
    data = kinds["ConfigMap"]["data"]
    container = yaml.safe_load(data["container.yaml"])
    volumes = yaml.safe_load(data["volumes.yaml"])
    key = "initContainers" if native else "containers"
    patch = yaml.safe_load(data["patch.yaml"])
    # Only the two lists: the workload's own pod settings (securityContext...) are left alone.
    assert patch == {"spec": {"template": {"spec": {key: [container], "volumes": volumes}}}}
    assert (container.get("restartPolicy") == "Always") is native
    assert [p["name"] for p in container["ports"]] == ["streamadapt"]  # not the app's "http"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "streamadapt"
    # What the patch adds makes a valid pod next to an app container.
    spec: dict[str, Any] = {"containers": [APP_CONTAINER], "volumes": volumes}
    spec[key] = spec.get(key, []) + [container]
    kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "processor"},
                 "spec": spec}, K8S, strict=True)


def test_example_chart_lints_clean_in_strict_mode(example: Path) -> None:
    for values in ({}, {"streamadapt": {"sidecar": {"native": True}}}):
        report = helm.lint(example, values=values, strict=True, with_subcharts=True)
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("native", [False, True])
def test_example_pod_runs_the_app_and_the_sidecar(example: Path, native: bool) -> None:
    values = {"streamadapt": {"sidecar": {"native": native},
                              "settings": {"kafka": {"bootstrap_servers": "broker:9093"}}}}
    docs = render(values, example, name="shop")
    validate_all(docs)
    kinds = by_kind(docs)
    # The dependency renders no Deployment, ServiceAccount nor patch: the example's pod is it.
    assert set(kinds) == {"Deployment", "Service"}
    assert any(p.startswith("link-processor/templates/") for p in docs)
    pod = pod_of(kinds)
    assert [c["name"] for c in pod["containers"]] == ["app"] + ([] if native else ["streamadapt"])
    assert [c["name"] for c in pod.get("initContainers", [])] == (["streamadapt"] if native
                                                                 else [])
    c, in_init = sidecar_of(pod)
    assert in_init is native and (c.get("restartPolicy") == "Always") is native
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert c["image"] == f"registry.example.com/ml/streamadapt:{app_version}"
    env = env_of(c)
    assert env["STREAMADAPT_KAFKA__BOOTSTRAP_SERVERS"] == "broker:9093"
    assert env["STREAMADAPT_KAFKA__INPUT_TOPICS"] == '["links.load"]'
    assert env["STREAMADAPT_KAFKA__GROUP_ID"] == "links-forecaster"
    assert env["STREAMADAPT_HTTP__PORT"] == "9108"
    assert env["STREAMADAPT_CHECKPOINT__DIR"] == "/var/lib/streamadapt/checkpoints"
    # Ports: the app keeps "http"; port names stay unique in the pod.
    every = pod["containers"] + pod.get("initContainers", [])
    names = [p["name"] for x in every for p in x.get("ports", [])]
    assert sorted(names) == ["http", "streamadapt"]
    assert c["ports"] == [{"name": "streamadapt", "containerPort": 9108, "protocol": "TCP"}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "streamadapt"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Every mount has its volume in the pod.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} == {"streamadapt-tmp",
                                                      "streamadapt-checkpoints"}
    assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
    assert volumes["streamadapt-checkpoints"] == {"name": "streamadapt-checkpoints",
                                                  "emptyDir": {}}
    # The dependency's Service selects the example's pods of this release only.
    svc = kinds["Service"]
    assert svc["metadata"]["name"] == "shop-streamadapt"
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "link-processor",
                                       "app.kubernetes.io/instance": "shop"}
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == 9108
    # The same container as the chart installed on its own gives in its patch.
    own = yaml.safe_load((EXAMPLE / "values.yaml").read_text())["streamadapt"]
    alone = by_kind(render(deep_merge(own, values["streamadapt"]), name="shop"))
    assert yaml.safe_load(alone["ConfigMap"]["data"]["container.yaml"]) == c


def test_example_pod_reads_the_dependencys_secret_claim_and_tls(example: Path) -> None:
    values = {"streamadapt": {
        "kafkaCredentials": {"create": True, "username": "svc", "password": "s3cr3t-pw",
                             "tlsSecret": "kafka-ca"},
        "checkpoints": {"persistence": {"enabled": True, "size": "2Gi"}},
        "serviceMonitor": {"enabled": True}}}
    docs = render(values, example, name="shop")
    validate_all(docs)
    kinds = by_kind(docs)
    assert set(kinds) == {"Deployment", "Service", "Secret", "PersistentVolumeClaim",
                          "ServiceMonitor"}
    pod = pod_of(kinds)
    c, _ = sidecar_of(pod)
    assert "s3cr3t-pw" not in yaml.safe_dump(kinds["Deployment"])
    ref = env_of(c)["STREAMADAPT_KAFKA__SASL_PASSWORD"]["secretKeyRef"]
    assert ref == {"name": kinds["Secret"]["metadata"]["name"], "key": "password"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["streamadapt-checkpoints"]["persistentVolumeClaim"]["claimName"]
    assert claim == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    assert claim == "shop-streamadapt-checkpoints"
    assert volumes["streamadapt-kafka-tls"]["secret"]["secretName"] == "kafka-ca"
    assert pod["securityContext"]["fsGroup"] == 10001  # the claim is writable by the sidecar
    sm = kinds["ServiceMonitor"]
    for k, v in sm["spec"]["selector"]["matchLabels"].items():
        assert kinds["Service"]["metadata"]["labels"][k] == v


@pytest.mark.parametrize(
    ("values", "error", "hint"),
    [
        ({"streamadapt": {"mode": "sidcar"}}, "HelmValuesError", "at '/mode'"),
        ({"streamadapt": {"settings": {"task": "vision"}}}, "HelmValuesError",
         "at '/settings/task'"),
        # The included templates refuse a scope that is not a sidecar-mode streamadapt.
        ({"streamadapt": {"mode": "standalone"}}, "HelmRenderError", ".Subcharts.streamadapt"),
    ],
)
def test_example_values_for_the_dependency_are_checked(
        example: Path, values: dict[str, Any], error: str, hint: str) -> None:
    with pytest.raises(getattr(helm, error), match=re.escape(hint)):
        render(values, example)


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
        ({"checkpoints": {"store": "s3"}}, "/checkpoints/store", "kafka"),
        ({"settings": {"kafka": {"acks": "leader"}}}, "/settings/kafka/acks", "all"),
        ({"settings": {"kafka": {"enable_idempotence": "yes"}}},
         "/settings/kafka/enable_idempotence", "boolean"),
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
        ({"settings": {"checkpoint": {"store": "kafka"}}}, "checkpoints.store"),
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
