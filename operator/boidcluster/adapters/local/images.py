"""Images for the podman runtime on machines that reach no registry: import archives, build the demo's.

- `import_image(FILE)`: an OCI or docker archive (`podman save`, `docker save`; recognised by its
  `oci-layout` or `manifest.json` member) is loaded with `podman load`; anything else tar-like is
  taken as a root filesystem and imported with `podman import` under the name given.
- `ensure_demo_image()`: the embedded demo's python image, built from Debian packages with
  `mmdebstrap --variant=essential --include=python3 bookworm` and `podman import`, once: the
  image store keeps it across runs (the build takes ~10-40 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .runtime import PodmanRuntime

DEMO_IMAGE = "localhost/boid-python:bookworm"
DEMO_SUITE = "bookworm"
DEMO_PACKAGES = ("python3",)


class ImageError(Exception):
    """An image could not be imported or built; the message says why and what to do."""


@dataclass(frozen=True)
class Imported:
    name: str
    digest: str
    how: str          # "loaded" (OCI/docker archive) or "imported" (root filesystem)


def archive_kind(path: Path) -> str:
    """'oci' / 'docker' archive, or 'rootfs' for any other tarball (compressed or not)."""
    try:
        with tarfile.open(path) as tar:
            names = set()
            for i, member in enumerate(tar):
                names.add(member.name.lstrip("./"))
                if i > 50:
                    break
    except (tarfile.TarError, OSError) as e:
        raise ImageError(f"{path}: not a tar archive ({e}); give an OCI/docker archive or a root filesystem tarball")
    if "oci-layout" in names or "index.json" in names:
        return "oci"
    if "manifest.json" in names:
        return "docker"
    return "rootfs"


def import_image(path: str | os.PathLike[str], name: str | None = None, runtime: PodmanRuntime | None = None) -> Imported:
    rt = runtime or PodmanRuntime()
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    kind = archive_kind(p)
    env = rt._base_env()
    if kind in ("oci", "docker"):
        r = subprocess.run(rt._cmd("load", "--input", str(p)), env=env, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise ImageError(f"{p}: podman load failed: {r.stderr.strip()[-400:]}")
        loaded = [line.split(":", 1)[1].strip() for line in r.stdout.splitlines() if line.startswith("Loaded image")]
        ref = loaded[0].split(",")[0].strip() if loaded else ""
        if name and ref:
            subprocess.run(rt._cmd("tag", ref, name), env=env, capture_output=True, timeout=120, check=False)
            ref = name
        digest = rt.image_id(ref) if ref else None
        if digest is None:
            raise ImageError(f"{p}: podman load gave no image ({r.stdout.strip()[-200:]})")
        return Imported(ref, digest, "loaded")
    if not name:
        raise ImageError(f"{p} is a root filesystem tarball: give it a name with --name, e.g. localhost/myimage:1")
    r = subprocess.run(rt._cmd("import", "--quiet", str(p), name), env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise ImageError(f"{p}: podman import failed: {r.stderr.strip()[-400:]}")
    digest = rt.image_id(name)
    if digest is None:
        raise ImageError(f"{p}: imported, but {name} is not in the image store")
    return Imported(name, digest, "imported")


def ensure_demo_image(runtime: PodmanRuntime | None = None, progress: Callable[[str], None] = lambda _m: None,
                      name: str = DEMO_IMAGE) -> str:
    """The demo image's digest, building it first if the image store does not have it."""
    rt = runtime or PodmanRuntime()
    digest = rt.image_id(name)
    if digest:
        return digest
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageError(f"building {name} needs mmdebstrap (apt-get install mmdebstrap), or import the image "
                         f"with `boidctl image import FILE --name {name}`")
    progress(f"building {name} from Debian {DEMO_SUITE} packages ({', '.join(DEMO_PACKAGES)}); "
             "once, it stays in podman's image store")
    mode = "root" if os.geteuid() == 0 else "unshare"
    with tempfile.TemporaryDirectory(prefix="boid-image-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        r = subprocess.run([mmdebstrap, "--variant=essential", f"--include={','.join(DEMO_PACKAGES)}",
                            f"--mode={mode}", "--quiet", DEMO_SUITE, str(tar)],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise ImageError(f"mmdebstrap could not build {name}: {r.stderr.strip()[-400:]}")
        return import_image(tar, name, rt).digest
