"""Settings: flags over STEERING_* environment variables over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.__main__ import parse_settings as settings_from
from api.settings import Settings


def test_defaults():
    s = settings_from([], {})
    assert (s.host, s.port, s.model, s.sae, s.dtype, s.device) == ("127.0.0.1", 8000, None, None, "auto", "auto")
    assert s.presets_dir == Path("presets") and s.max_queue == 64 and s.threads is None


def test_environment_then_flags():
    env = {"STEERING_HOST": "0.0.0.0", "STEERING_PORT": "9000", "STEERING_MODEL": "m", "STEERING_SAE": "none",
           "STEERING_DTYPE": "bfloat16", "STEERING_DEVICE": "cpu", "STEERING_THREADS": "2", "STEERING_MAX_QUEUE": "3",
           "STEERING_PRESETS_DIR": "/p", "STEERING_MAX_BATCH": "4"}
    s = settings_from([], env)
    assert s == Settings(host="0.0.0.0", port=9000, model="m", sae="none", dtype="bfloat16", device="cpu",
                         threads=2, max_queue=3, presets_dir=Path("/p"), max_batch=4)
    s = settings_from(["--port", "9100", "--host", "::1", "--sae", "x", "--presets-dir", "q", "--max-queue", "5",
                       "--max-batch", "2"], env)
    assert (s.port, s.host, s.sae, s.presets_dir, s.max_queue, s.model, s.max_batch) == (9100, "::1", "x", Path("q"), 5, "m", 2)


@pytest.mark.parametrize("argv", [["--port", "x"], ["--max-queue", "0"], ["--threads", "-1"]])
def test_bad_flags_exit(argv):
    with pytest.raises(SystemExit):
        settings_from(argv, {})


def test_bad_environment_exits():
    with pytest.raises(SystemExit):
        settings_from([], {"STEERING_PORT": "eighty"})
