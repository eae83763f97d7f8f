"""Resuming an audit: runs saved before a config key existed resume; a real change is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedleak.audit.config import AuditConfig
from fedleak.audit.runner import check_resume
from fedleak.errors import ConfigError


def _save(out: Path, saved: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"audit_config": saved}))


def test_a_run_saved_without_newer_keys_resumes(tmp_path: Path) -> None:
    cfg = AuditConfig()
    saved = json.loads(json.dumps(cfg.to_dict()))
    del saved["device"], saved["engine"]  # what an older fedleak wrote
    del saved["audit"]["options"]  # a nested key added later
    _save(tmp_path, saved)
    check_resume(tmp_path, cfg, resume=True)  # no error


def test_a_changed_key_is_refused_and_named(tmp_path: Path) -> None:
    saved = json.loads(json.dumps(AuditConfig().to_dict()))
    _save(tmp_path, saved)
    cfg = AuditConfig()
    cfg.federation.rounds = saved["federation"]["rounds"] + 1
    with pytest.raises(ConfigError, match=r"federation\.rounds"):
        check_resume(tmp_path, cfg, resume=True)


def test_a_missing_key_with_a_non_default_value_is_still_a_change(tmp_path: Path) -> None:
    saved = json.loads(json.dumps(AuditConfig().to_dict()))
    del saved["device"]
    _save(tmp_path, saved)
    cfg = AuditConfig(device="cpu")
    with pytest.raises(ConfigError, match="device"):
        check_resume(tmp_path, cfg, resume=True)
