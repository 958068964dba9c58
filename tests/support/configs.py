"""Reading the reason a config file is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, load_config


def load_error(path: Path) -> str:
    """The reason ``load_config`` refuses ``path``: one line, naming the file first."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    reason = str(caught.value)
    assert reason.startswith(f"{path}: ")
    assert "\n" not in reason
    return reason
