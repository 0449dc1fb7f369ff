"""What the container test needs on a machine without an image registry: an engine, a base image, torch.

    reason = engine_unavailable()                 # None when `docker info` answers
    base = ensure_base_image()                    # the stand-in for python:3.11-slim (built once, then kept)
    with torch_index(tmp) as (url, host): ...     # a PEP 503 index of the pinned torch wheel on 127.0.0.1

The public base image cannot be pulled here, so `ensure_base_image` makes one
from Debian's packages: debootstrap (minbase) of the host's Debian release
with python3.11, a virtual environment at /opt/python first on PATH (so
`python` and `pip` are the commands python:3.11-slim has), and the host's CA
bundle (this machine's registries are reached through it; pip is pointed at
it as on the host). It is kept under BASE_TAG, as a pulled base would be
cached; `docker rmi` it to start over. PyTorch's CPU index is not reachable
either: the pinned torch wheel and its dependencies come from `pip download`
(torch from the folder pip's find-links names, where this machine keeps it)
and are served as an index to the build (`docker build --network host`) over
loopback.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

BASE_TAG = "steering-test/python:3.11-bookworm"
TORCH_VERSION = "2.13.0"  # as the Makefile pins it
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PATH = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def docker(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check, **kwargs)


def engine_unavailable() -> str | None:
    """Why no Docker engine answers here (None: one does). `make docker-engine` installs and starts one."""
    if shutil.which("docker") is None:
        return "no docker command (make docker-engine installs Debian's docker.io)"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"no Docker engine answers ({info.stderr.strip()[:200]}); make docker-engine starts dockerd as root"
    return None


def ensure_base_image(tag: str = BASE_TAG) -> str:
    """The stand-in base image (module docstring), built when missing; raises RuntimeError saying why it cannot be."""
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise RuntimeError("building the base image needs root and debootstrap (make docker-engine installs it)")
    release = _debian_codename()
    with tempfile.TemporaryDirectory(prefix="steering-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        packages = "python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl," \
                   "python3-setuptools-whl,python3,ca-certificates"  # debootstrap does not resolve --include's deps
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}", release, str(root),
                        "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=1800)
        subprocess.run(["chroot", str(root), "python3.11", "-m", "venv", "/opt/python"], check=True, timeout=300)
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / cache, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        changes = [f"ENV PATH={PATH}", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                   "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", 'CMD ["python3"]']
        args = [arg for change in changes for arg in ("--change", change)]
        subprocess.run(["docker", "import", *args, "-", tag], stdin=tar.stdout, check=True, capture_output=True,
                       timeout=600)
        tar.wait()
    return tag


def _debian_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


def torch_wheels(folder: Path) -> list[Path]:
    """The pinned torch CPU wheel and its dependencies' wheels in `folder`, by pip download (pip takes torch
    from its find-links folders where this machine keeps it, the rest from PyPI)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-d", str(folder),
                    f"torch=={TORCH_VERSION}"], check=True, capture_output=True, timeout=1800)
    return sorted(folder.glob("*.whl"))


@contextlib.contextmanager
def torch_index(folder: Path) -> Iterator[tuple[str, str]]:
    """A PEP 503 index of torch and its dependencies (what PyTorch's CPU index offers), served on 127.0.0.1:
    yields (index url, host)."""
    simple = folder / "simple"
    projects: dict[str, list[str]] = {}
    for wheel in torch_wheels(folder / "wheels"):
        name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        (simple / name).mkdir(parents=True, exist_ok=True)
        os.symlink(wheel, simple / name / wheel.name)
        projects.setdefault(name, []).append(wheel.name)
    for name, files in projects.items():
        (simple / name / "index.html").write_text("".join(f'<a href="{f}">{f}</a>\n' for f in files))
    (simple / "index.html").write_text("".join(f'<a href="{n}/">{n}</a>\n' for n in projects))
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", "127.0.0.1"
    finally:
        server.shutdown()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass
