"""ClientApp: local training with fedleak, then fedleak's filters and self-check (a mod).

Add Flower's own mods after fedleak's, e.g. ``make_client_app(config, mods=[LocalDpMod(...)])``:
the self-check then judges the update as it leaves the client, after clipping and noise.
"""

from pathlib import Path

from flwr.app import Context

from fedleak.audit import AuditConfig
from fedleak.integrations.flower import config_from_run_config, make_client_app

HERE = Path(__file__).parent


def config(context: Context) -> AuditConfig:
    """The audit config named by the run config (relative paths: this app's folder)."""
    return config_from_run_config(dict(context.run_config), root=HERE)


app = make_client_app(config)
