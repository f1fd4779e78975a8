"""What the suite needs beyond the locked environment, installed on first use, so that the
README's test command runs every test on a machine that has only Python:

- PostgreSQL 15 with PostGIS (Debian packages), for the stac-fastapi-pgstac catalog;
- the optional torch stack (pinned in ``requirements-optional.txt``): torch's CPU build is
  installed with pip because a locked ``torch`` would bring several GB of CUDA packages.

Each check is cheap when the thing is already there; installs hold a lock file, so that two
test processes never run apt or pip at the same time.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path(os.environ.get("STACCHIP_PG_BIN", "/usr/lib/postgresql/15/bin"))
POSTGIS_CONTROL = Path("/usr/share/postgresql/15/extension/postgis.control")
OPTIONAL = Path(__file__).with_name("requirements-optional.txt")
DEBIAN_PACKAGES = ("postgresql-15", "postgresql-15-postgis-3")


class ProvisionError(RuntimeError):
    pass


@contextmanager
def _install_lock():
    with open(Path(os.environ.get("TMPDIR", "/tmp")) / "stacchip-tests-provision.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], **kwargs) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, **kwargs, check=False)
    if r.returncode:
        raise ProvisionError(
            f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}"
        )


def postgis_installed() -> bool:
    return (PG_BIN / "initdb").exists() and POSTGIS_CONTROL.exists()


def ensure_postgis() -> None:
    """PostgreSQL 15 and PostGIS 3, from Debian's packages when missing (needs root and apt)."""
    if postgis_installed():
        return
    with _install_lock():
        if postgis_installed():
            return
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise ProvisionError(
                "the STAC API tests need PostgreSQL 15 with PostGIS: install "
                f"{' '.join(DEBIAN_PACKAGES)}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], env=env)
    if not postgis_installed():
        raise ProvisionError(
            f"installing {' '.join(DEBIAN_PACKAGES)} did not provide {POSTGIS_CONTROL}"
        )


def ensure_chromium() -> str:
    """Debian's headless-capable Chromium (for the demo map's rendering test); its path."""
    found = shutil.which("chromium")
    if found:
        return found
    with _install_lock():
        if not shutil.which("chromium"):
            if os.geteuid() != 0 or not shutil.which("apt-get"):
                raise ProvisionError(
                    "the demo map test needs Chromium: install Debian's chromium package"
                )
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            _run(["apt-get", "update", "-qq"], env=env)
            _run(["apt-get", "install", "-y", "-qq", "chromium"], env=env)
    found = shutil.which("chromium")
    if not found:
        raise ProvisionError("installing chromium did not provide a chromium executable")
    return found


def _pins() -> dict[str, str]:
    pins = {}
    for line in OPTIONAL.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def _missing() -> list[str]:
    missing = []
    for name, version in _pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if version and installed.split("+")[0] != version:
            missing.append(name)
    return missing


def ensure_optional_packages() -> None:
    """The pinned optional packages (torch's CPU build first), installed into this
    interpreter's environment with pip when missing or at another version."""
    if not _missing():
        return
    with _install_lock():
        if _missing():
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "-r",
                    str(OPTIONAL),
                ]
            )
    importlib.invalidate_caches()
    still = _missing()
    if still:
        raise ProvisionError(f"could not install {', '.join(still)} from {OPTIONAL.name}")


def import_torch_stack() -> None:
    """Import torch, torchvision, lightning and torchgeo (installed by ensure_optional_packages).

    The only torchvision wheels in the registries are CUDA builds: their compiled ops cannot
    load against the CPU torch from /opt/wheels, and torchvision 0.28 then fails at import on
    registering a fake kernel for ``torchvision::nms``. Declaring the two op schemas first lets
    it import (detection ops like nms stay unavailable; nothing here uses them). With a
    matching torchvision build this does nothing."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is not None and not _cpu_stub_lib:
        libs = list(Path(spec.origin).parent.glob("_C*.so"))
        try:
            for path in libs:
                torch.ops.load_library(str(path))
        except OSError:  # a CUDA build: libc10_cuda.so is missing
            _cpu_stub_lib.append(lib := torch.library.Library("torchvision", "FRAGMENT"))
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import lightning  # noqa: F401
    import torchgeo  # noqa: F401
    import torchvision  # noqa: F401


_cpu_stub_lib: list = []  # keeps the Library object (and its definitions) alive
