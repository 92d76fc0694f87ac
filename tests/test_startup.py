"""gateway_app.startup: a broken config becomes one readable error, in the master and in a worker."""

from __future__ import annotations

import pathlib
import shutil

import pytest
from gunicorn.errors import AppImportError

from gateway_app.settings import Settings
from gateway_app.startup import check_before_fork
from gateway_app.startup import load_app

from tests.support.servers import REPO_ROOT


@pytest.fixture
def broken(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    shutil.copytree(REPO_ROOT / "rego", tmp_path / "rego")
    (tmp_path / "conf" / "extra.yaml").write_text("kind: Upstream\nmetadata: {name: u}\nspec: {statik: {}}\n")
    monkeypatch.setenv("GATEWAY_CONFIG_DIR", str(tmp_path / "conf"))
    monkeypatch.setenv("GATEWAY_REGO_DIR", str(tmp_path / "rego"))
    monkeypatch.setenv("GATEWAY_RELOAD_INTERVAL", "0")
    return tmp_path


def test_a_worker_finding_a_broken_config_fails_to_load_with_the_rejected_lines(broken):
    with pytest.raises(AppImportError) as caught:
        load_app()
    message = str(caught.value)
    assert "Upstream default/u" in message
    assert "spec.statik: unknown field statik (did you mean static?)" in message


def test_the_master_check_logs_each_rejected_resource_once_and_exits_1(broken, caplog):
    with pytest.raises(SystemExit) as caught:
        check_before_fork(Settings.from_env())
    assert caught.value.code == 1
    rejected = [r for r in caplog.records if r.getMessage().startswith("config rejected: ")]
    assert len(rejected) == 1
    assert rejected[0].context["field"] == "spec.statik"
    assert rejected[0].context["line"] == 3


def test_the_master_check_passes_a_valid_config(monkeypatch):
    monkeypatch.setenv("GATEWAY_CONFIG_DIR", str(REPO_ROOT / "conf"))
    monkeypatch.setenv("GATEWAY_REGO_DIR", str(REPO_ROOT / "rego"))
    check_before_fork(Settings.from_env())
