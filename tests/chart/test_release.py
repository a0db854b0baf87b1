"""The release workflow: valid YAML, and it publishes exactly the names the chart pulls."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import CHART, NAMESPACE, RELEASE, one, render

pytestmark = pytest.mark.timeout(30)

ROOT = CHART.parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
RELEASE_WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_files_are_valid(path: Path) -> None:
    doc = load(path)
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on, f"{path.name}: no trigger"
    assert doc["jobs"], f"{path.name}: no jobs"
    for name, job in doc["jobs"].items():
        assert "runs-on" in job and job["steps"], f"{path.name}: job {name}"
        for need in (
            [job.get("needs", [])] if isinstance(job.get("needs"), str) else job.get("needs", [])
        ):
            assert need in doc["jobs"], f"{path.name}: {name} needs unknown job {need}"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{path.name}: {name}: {step}"


def chart_values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def chart_meta() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


def test_the_release_pushes_the_images_the_chart_pulls() -> None:
    doc = load(RELEASE_WORKFLOW)
    assert doc.get("on", doc.get(True)) == {"push": {"tags": ["v*.*.*"]}}
    assert doc["permissions"]["packages"] == "write"
    registry = doc["env"]["REGISTRY"]
    images = doc["jobs"]["images"]
    matrix = {m["image"]: m["target"] for m in images["strategy"]["matrix"]["include"]}
    assert matrix == {"clarion": "gateway", "clarion-operator": "operator"}
    build = next(
        s for s in images["steps"] if str(s.get("uses", "")).startswith("docker/build-push")
    )
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    tag = build["with"]["tags"]
    owner = "${{ needs.check.outputs.owner }}"
    version = "${{ needs.check.outputs.version }}"
    assert tag == f"${{{{ env.REGISTRY }}}}/{owner}/${{{{ matrix.image }}}}:{version}"

    # The project's owner, from Chart.yaml's home: github.com/<owner>/clarion.
    m = re.fullmatch(r"https://github.com/([^/]+)/clarion", chart_meta()["home"])
    assert m, chart_meta()["home"]
    project = m.group(1)
    values = chart_values()
    pulled = {values["image"]["repository"], values["operator"]["image"]["repository"]}
    assert pulled == {f"{registry}/{project}/{image}" for image in matrix}
    # Tag "" means the appVersion, which the workflow requires the git tag to equal.
    assert values["image"]["tag"] == "" and values["operator"]["image"]["tag"] == ""
    docs = render()
    app = chart_meta()["appVersion"]
    gw = one(docs, "WebSocketGateway")
    assert gw["spec"]["image"] == f"{registry}/{project}/clarion:{app}"
    op = one(docs, "Deployment", f"{RELEASE}-operator")
    assert op["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{registry}/{project}/clarion-operator:{app}"
    )
    chart = doc["jobs"]["chart"]
    script = "\n".join(s.get("run", "") for s in chart["steps"])
    assert 'helm package charts/clarion --version "${VERSION}" --app-version "${VERSION}"' in script
    assert 'helm push "dist/clarion-${VERSION}.tgz" "oci://${REGISTRY}/${OWNER}/charts"' in script
    assert set(chart["needs"]) == {"check", "images"}  # the chart only after its images


def run_check(tmp_path: Path, ref: str, owner: str) -> subprocess.CompletedProcess[str]:
    """The workflow's `check` step, run by bash as GitHub would run it."""
    step = next(
        s for s in load(RELEASE_WORKFLOW)["jobs"]["check"]["steps"] if s.get("id") == "version"
    )
    out = tmp_path / "output"
    env = {
        **os.environ,
        "REGISTRY": load(RELEASE_WORKFLOW)["env"]["REGISTRY"],
        "GITHUB_REF_NAME": ref,
        "GITHUB_REPOSITORY_OWNER": owner,
        "GITHUB_OUTPUT": str(out),
    }
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", step["run"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_the_release_check_refuses_names_the_chart_does_not_pull(tmp_path: Path) -> None:
    app = chart_meta()["appVersion"]
    owner = re.sub(r"https://github.com/([^/]+)/.*", r"\1", chart_meta()["home"])
    ok = run_check(tmp_path, f"v{app}", owner.upper())  # owners are case-insensitive
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"version={app}" in (tmp_path / "output").read_text()
    fork = run_check(tmp_path, f"v{app}", "someone-else")
    assert fork.returncode != 0 and "does not pull ghcr.io/someone-else/clarion" in fork.stdout
    wrong = run_check(tmp_path, "v9.9.9", owner)
    assert wrong.returncode != 0 and "versions disagree:" in wrong.stderr
    assert "9.9.9  the git tag v9.9.9" in wrong.stderr
    assert f"{app}  charts/clarion/Chart.yaml: appVersion" in wrong.stderr


def test_the_release_publishes_both_python_distributions_and_the_npm_package() -> None:
    """At the tag's version (scripts/versions.py: tests/test_versions.py), after the images."""
    jobs = load(RELEASE_WORKFLOW)["jobs"]
    check = "\n".join(s.get("run", "") for s in jobs["check"]["steps"])
    assert 'python3 scripts/versions.py --tag "${GITHUB_REF_NAME}"' in check
    python = jobs["python"]
    assert set(python["needs"]) == {"check", "images"}
    assert python["permissions"]["id-token"] == "write"  # trusted publishing, no token
    build = "\n".join(s.get("run", "") for s in python["steps"])
    assert "python -m build --outdir dist clients/python" in build
    assert "python -m build --outdir dist ." in build
    assert "for name in clarion_client clarion; do" in build
    (publish,) = [s for s in python["steps"] if "pypa/gh-action-pypi-publish" in s.get("uses", "")]
    assert publish["with"]["packages-dir"] == "dist"
    npm = jobs["npm"]
    assert set(npm["needs"]) == {"check", "images"}
    (step,) = [s for s in npm["steps"] if "npm publish" in s.get("run", "")]
    assert step["working-directory"] == "clients/js"
    assert step["env"]["NODE_AUTH_TOKEN"] == "${{ secrets.NPM_TOKEN }}"
    assert "npm run test:unit" in step["run"]


def test_docs_say_what_comes_before_helm_install() -> None:
    """README, docs/kubernetes.md and NOTES.txt: images, registry, StorageClass, version."""
    kube = chart_meta()["kubeVersion"]
    assert kube == ">=1.27.0-0"  # unhealthyPodEvictionPolicy, CRD validation rules
    for path in (
        ROOT / "README.md",
        ROOT / "docs" / "kubernetes.md",
        CHART / "templates" / "NOTES.txt",
    ):
        text = path.read_text()
        assert "image.repository" in text, path
        assert "StorageClass" in text, path
        assert "1.27" in text, path
    assert NAMESPACE  # the chart tests' namespace, used by the renders above
