"""ServerApp: FedAvg wrapped in fedleak's AuditStrategy; writes fedleak's run folder."""

from pathlib import Path

from flwr.app import Context

from fedleak.audit import AuditConfig
from fedleak.integrations.flower import config_from_run_config, make_server_app

HERE = Path(__file__).parent


def config(context: Context) -> AuditConfig:
    """The audit config named by the run config (relative paths: this app's folder)."""
    return config_from_run_config(dict(context.run_config), root=HERE)


app = make_server_app(config)
