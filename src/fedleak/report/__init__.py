"""Pictures and files people read: reconstruction grids, run folders."""

from fedleak.report.grid import save_grid
from fedleak.report.run import append_jsonl, read_jsonl, write_config, write_json

__all__ = ["append_jsonl", "read_jsonl", "save_grid", "write_config", "write_json"]
