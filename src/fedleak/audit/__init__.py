"""Leakage audits over federated training (seed 000): per round, per client, by the client."""

from fedleak.audit.config import AuditConfig, load_config
from fedleak.audit.runner import run_audit
from fedleak.audit.selfcheck import CheckResult, SelfCheck, check_update, empty_update

__all__ = [
    "AuditConfig",
    "CheckResult",
    "SelfCheck",
    "check_update",
    "empty_update",
    "load_config",
    "run_audit",
]
