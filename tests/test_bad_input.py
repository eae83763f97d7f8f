"""Bad input gets one clear line: no library essays, no advice to disable safety checks."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest

from fedleak.data import load_dataset
from fedleak.errors import DataError
from fedleak.fl import ClientUpdate


class _Evil:
    def __reduce__(self):  # would run a command if ever unpickled
        return (print, ("unpickled!",))


@pytest.mark.parametrize("payload", ["pickle", "garbage"])
def test_update_load_refuses_in_one_line(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "update.pt"
    if payload == "pickle":
        path.write_bytes(pickle.dumps({"x": _Evil()}))
    else:
        path.write_bytes(b"\x00garbage\xff" * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pickle-protocol warning leaks out either
        with pytest.raises(DataError) as info:
            ClientUpdate.load(path)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg and "never unpickles" in msg


def test_fake_png_names_the_format(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_text("not an image")
    with pytest.raises(DataError) as info:
        load_dataset(f"folder:{tmp_path}")
    msg = str(info.value)
    assert "not a readable PNG or JPEG image" in msg and "pip install" not in msg
