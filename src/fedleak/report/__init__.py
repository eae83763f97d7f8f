"""Pictures and files people read: reconstruction grids, run folders, plots, HTML reports."""

from fedleak.report.grid import save_grid
from fedleak.report.html import write_report
from fedleak.report.plots import (
    plot_accuracy,
    plot_leakage_per_round,
    plot_leakage_vs,
    plot_privacy_utility,
)
from fedleak.report.run import (
    RunLock,
    append_jsonl,
    claim_run_folder,
    read_jsonl,
    write_config,
    write_json,
)

__all__ = [
    "RunLock",
    "append_jsonl",
    "claim_run_folder",
    "plot_accuracy",
    "plot_leakage_per_round",
    "plot_leakage_vs",
    "plot_privacy_utility",
    "read_jsonl",
    "save_grid",
    "write_config",
    "write_json",
    "write_report",
]
