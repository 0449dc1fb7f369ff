"""`python -m api`: start-up failures stop the process with exit status 1 and a clear message."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_api(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "api", "--port", str(_free_port()), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_broken_preset_stops_start_up(tmp_path):
    bad = tmp_path / "loud.json"
    bad.write_text(json.dumps({"name": "loud", "description": "d", "model": "m", "sae": "s",
                               "features": [{"index": 1, "value": 5000}]}))
    out = run_api("--presets-dir", str(tmp_path))
    assert out.returncode == 1
    assert f"invalid preset {bad}: field 'features[0].value'" in out.stderr


def test_unknown_model_stops_start_up(tmp_path):
    out = run_api("--model", str(tmp_path / "absent"), "--presets-dir", str(tmp_path))
    assert out.returncode == 1
    assert "start-up failed" in out.stderr and "not found" in out.stderr


def test_a_public_bind_without_a_key_is_refused():
    out = run_api("--host", "0.0.0.0")
    assert out.returncode == 2
    assert "refusing to serve 0.0.0.0 without an API key" in out.stderr and "--insecure-no-auth" in out.stderr


def test_settings_know_loopback_binds():
    from api.settings import is_loopback, settings_from

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.1.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")
    assert settings_from({}, {"STEERING_INSECURE_NO_AUTH": "1"}).insecure_no_auth
    assert not settings_from({"insecure_no_auth": None}, {}).insecure_no_auth
