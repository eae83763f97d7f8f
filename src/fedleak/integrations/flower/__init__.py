"""fedleak on Flower (``pip install 'fedleak[flower]'``, Flower 1.41 Message API).

- :func:`to_arrays` / :func:`from_arrays`: :class:`~fedleak.fl.ClientUpdate` <-> ArrayRecord
  (the client's local model given the global arrays), metadata in a ConfigRecord.
- :class:`AuditStrategy`: wraps any Flower strategy and attacks the updates it receives.
- :class:`LeakageCheckMod`: client-side mod, fedleak filters plus the client's own leakage check.
- :func:`make_client_app` / :func:`make_server_app`: the apps of ``examples/flower``.
- :func:`run_flower_audit`: :func:`fedleak.audit.run_audit` on Flower's Simulation Engine.
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # fedleak runs offline; read at flwr import

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fedleak.integrations.flower needs Flower: pip install 'fedleak[flower]' "
        "(flwr[simulation]==1.41.*)."
    ) from exc

from fedleak.integrations.flower.apps import (  # noqa: E402
    Federation,
    config_from_run_config,
    make_client_app,
    make_server_app,
    serve_audit,
)
from fedleak.integrations.flower.engine import backend_config, run_flower_audit  # noqa: E402
from fedleak.integrations.flower.mod import (  # noqa: E402
    CLIENT_KEY,
    SELFCHECK_KEY,
    WITHHELD_KEY,
    LeakageCheckMod,
)
from fedleak.integrations.flower.records import (  # noqa: E402
    derive_training,
    from_arrays,
    to_arrays,
    train_config_record,
    train_options,
    update_meta,
)
from fedleak.integrations.flower.strategy import (  # noqa: E402
    AuditStrategy,
    SeededFedAvg,
    is_withheld,
)

__all__ = [
    "CLIENT_KEY",
    "SELFCHECK_KEY",
    "WITHHELD_KEY",
    "AuditStrategy",
    "Federation",
    "LeakageCheckMod",
    "SeededFedAvg",
    "backend_config",
    "config_from_run_config",
    "derive_training",
    "from_arrays",
    "is_withheld",
    "make_client_app",
    "make_server_app",
    "run_flower_audit",
    "serve_audit",
    "to_arrays",
    "train_config_record",
    "train_options",
    "update_meta",
]
