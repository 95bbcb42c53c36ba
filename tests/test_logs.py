"""LOG_LEVEL and LOG_FORMAT shape what the API and the workers write."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.logs import HANDLER_NAME, configure_logging
from app.settings import Settings


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]


@pytest.mark.usefixtures("restore_root")
def test_json_lines_at_the_configured_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(_env_file=None, log_format="json", log_level="WARNING"))  # type: ignore[call-arg]
    log = logging.getLogger("app.test")
    log.info("not written")
    log.warning("queue %s is long", "ai_analysis", extra={"task_id": "t-1"})
    [line] = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "WARNING" and record["logger"] == "app.test"
    assert record["message"] == "queue ai_analysis is long" and record["task_id"] == "t-1"


@pytest.mark.usefixtures("restore_root")
def test_text_lines_and_one_handler_however_often_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(3):
        configure_logging(Settings(_env_file=None, log_format="text", log_level="DEBUG"))  # type: ignore[call-arg]
    assert len(_ours()) == 1
    logging.getLogger("worker.test").debug("lease renewed")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("DEBUG worker.test lease renewed")


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log_level"):
        Settings(_env_file=None, log_level="LOUD")  # type: ignore[call-arg, arg-type]
