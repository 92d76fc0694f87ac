"""Deployment files: Kubernetes manifests parse and agree with each other, the example config
they ship validates, and the Dockerfile copies files that exist. (No Docker engine or cluster
is needed: these are static checks.)"""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
import yaml

from gateway_app.config.build import build_config
from gateway_app.settings import Settings

REPO = pathlib.Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "Dockerfile"


def manifests() -> dict[str, dict]:
    """Kubernetes objects by kind (the files kustomization.yaml lists)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            objects[document["kind"]] = document
    return objects


def container() -> dict:
    return manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_valid_yaml_with_kind_and_name(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for document in documents:
        assert document.get("apiVersion") and document.get("kind")
        if document["kind"] != "Kustomization":
            assert document["metadata"]["name"]


def test_kustomization_lists_existing_files_and_every_kind_the_deployment_needs():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = list(kustomization["resources"])
    listed += [f for generator in kustomization["configMapGenerator"] for f in generator["files"]]
    assert all((K8S / name).is_file() for name in listed)
    assert {"Deployment", "Service", "Secret", "HorizontalPodAutoscaler"} <= set(manifests())


def test_probes_use_the_gateway_health_endpoints_on_the_container_port():
    spec = container()
    prefix = Settings().admin_prefix
    assert spec["readinessProbe"]["httpGet"]["path"] == f"{prefix}/health/ready"
    assert spec["livenessProbe"]["httpGet"]["path"] == f"{prefix}/health/live"
    assert spec["ports"][0] == {"name": "http", "containerPort": 8080}
    assert manifests()["Service"]["spec"]["ports"][0]["targetPort"] == "http"


def test_the_pod_runs_as_non_root_on_a_read_only_root_filesystem():
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


def test_volumes_mount_the_generated_config_maps_and_the_secret():
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert set(mounts) == set(volumes)
    generated = {g["name"] for g in kustomization["configMapGenerator"]}
    assert {v["configMap"]["name"] for v in volumes.values() if "configMap" in v} == generated
    assert volumes["client-secrets"]["secret"]["secretName"] == manifests()["Secret"]["metadata"]["name"]
    assert mounts["conf"].startswith(env["GATEWAY_CONFIG_DIR"] + "/")
    assert mounts["client-secrets"].startswith(env["GATEWAY_CONFIG_DIR"] + "/")
    assert mounts["rego"] == env["GATEWAY_REGO_DIR"]
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(mounts["tmp"] + "/")


def test_the_example_config_with_its_secret_is_accepted(tmp_path):
    conf = tmp_path / "conf"
    (conf / "resources").mkdir(parents=True)
    (conf / "secrets").mkdir()
    for path in (K8S / "conf").glob("*.yaml"):
        (conf / "resources" / path.name).write_text(path.read_text())
    for name, text in manifests()["Secret"]["stringData"].items():
        (conf / "secrets" / name).write_text(text)

    result = build_config(conf, K8S / "rego")

    assert [s.describe() for s in result.errors] == []
    assert {s.kind for s in result.statuses} >= {"Secret", "Upstream", "AuthConfig", "VirtualService", "RegoModule"}


def test_the_k8s_rego_modules_are_the_shipped_ones():
    for path in (K8S / "rego").glob("*.rego"):
        assert path.read_text() == (REPO / "rego" / path.name).read_text()


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_copies_files_that_exist_and_are_not_docker_ignored():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    copies = [shlex.split(args)[:-1] for op, args in dockerfile_instructions() if op == "COPY"]
    sources = [source for sources in copies for source in sources]
    assert {"gateway_app", "conf", "rego", "wsgi.py", "setup.cfg"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert source not in ignored, source


def test_dockerfile_runs_gunicorn_as_non_root_with_a_liveness_healthcheck():
    instructions = dict(dockerfile_instructions())
    assert instructions["FROM"] == "python:3.11-slim"
    assert instructions["USER"].split(":")[0] not in ("0", "root")
    assert instructions["EXPOSE"] == "8080"
    command = yaml.safe_load(instructions["CMD"])
    assert command == ["gunicorn", "-c", "conf/gunicorn.conf.py", "--bind", "0.0.0.0:8080", "wsgi:app"]
    assert (REPO / command[2]).is_file() and (REPO / "wsgi.py").is_file()
    assert re.search(r"urllib\.request.*127\.0\.0\.1:8080" + re.escape(Settings().admin_prefix) + "/health/live",
                     instructions["HEALTHCHECK"])
