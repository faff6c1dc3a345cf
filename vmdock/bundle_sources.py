"""What a bundle carries for some labs, found on this host (``vmdock bundle export``).

* the host's docker images: the docker provider's machine image (label
  ``vmdock.role=machine-image``) and each lab's prebuilt lab images (label
  ``vmdock.lab-image.lab=<lab>`` or repository ``vmdock/lab-<lab>-<machine>``),
  saved together so that shared layers are stored once;
* the cache: the rootfs tarballs (``rootfs-*.tar.gz`` and their ``.json``) and
  the boxes vmdock built (``boxes/*.box`` and their ``.json``);
* for online labs, a `docker save` tarball of each image in ``needs.images``:
  from the images folder (``--images-dir``), from the folder a bundle filled
  before, or saved from this host's dockerd.

What cannot be found is written down (``notes``), never silently left out.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import needs, paths
from .bundle_manifest import Compression, ImageRef, Kind, LabEntry
from .hostbuild import machine_image, rootfs
from .loader import LoadedLab
from .providers.docker import docker_daemon
from .runlog import Log, run
from .settings import Settings
from .state import hash_paths

LAB_IMAGE_LABEL = "vmdock.lab-image.lab"
LAB_IMAGE_REPO = "vmdock/lab-"


@dataclass
class Source:
    """One member to be: a file to copy, or images to `docker save`."""

    kind: Kind
    target: str  # file name where it lands on import
    compression: Compression  # none for what is gzip already
    path: Path | None = None
    refs: list[ImageRef] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def member(self) -> str:
        sub = "images/" if self.kind == "image-tarball" else ""
        return f"members/{sub}{self.target}" + (".zst" if self.compression == "zstd" else "")


@dataclass
class Plan:
    sources: list[Source]
    labs: list[LabEntry]
    notes: list[str]


def lab_fingerprint(loaded: LoadedLab) -> str:
    folder = loaded.folder
    return hash_paths(folder, sorted(p.name for p in folder.iterdir() if p.name != "__pycache__"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _docker_images(log: Log, *filters: str) -> list[ImageRef]:
    args = [a for f in filters for a in ("--filter", f)]
    out = run(["docker", "image", "ls", "--no-trunc", *args, "--format", "{{.Repository}}:{{.Tag}}\t{{.ID}}"],
              log, timeout=60).stdout
    refs = []
    for line in out.splitlines():
        ref, _, image_id = line.partition("\t")
        if "<none>" not in ref:
            refs.append(ImageRef(ref=ref, id=image_id.strip()))
    return refs


def _lab_images(log: Log, lab: str) -> list[ImageRef]:
    found = _docker_images(log, f"label={LAB_IMAGE_LABEL}={lab}")
    found += _docker_images(log, f"reference={LAB_IMAGE_REPO}{lab}-*")
    return list({r.ref: r for r in found}.values())


def _tarball_name(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", ref).lstrip("._-") + ".tar"


def _needs_sources(loaded: LoadedLab, entry: LabEntry, index: dict[str, Path], docker_ok: bool,
                   log: Log) -> list[Source]:
    out = []
    for ref in loaded.lab.needs.images:
        tarball = index.get(needs.normalize(ref))
        if tarball is not None:
            gz = tarball.name.endswith((".gz", ".tgz"))
            out.append(Source("image-tarball", tarball.name, "none" if gz else "zstd", path=tarball,
                              refs=[ImageRef(ref=ref)]))
        elif docker_ok and machine_image.image_exists(log, ref):
            out.append(Source("image-tarball", _tarball_name(ref), "zstd", refs=[ImageRef(ref=ref)]))
        else:
            entry.notes.append(f"needs image {ref}: not in the images folder nor in this host's dockerd; "
                               "not in the bundle")
    return out


def _machine_images(log: Log, notes: list[str]) -> list[ImageRef]:
    """The machine image `vmdock up` would use here (its tag is computed), else every one."""
    found = _docker_images(log, f"label={machine_image.ROLE_LABEL}")
    if not found:
        notes.append("no docker-provider machine image here (`vmdock box build --provider docker` makes it)")
        return []
    current = machine_image.machine_image_tag()
    chosen = [r for r in found if r.ref == current]
    if not chosen:
        notes.append(f"none of the {len(found)} machine images here is the one this vmdock builds "
                     f"(tag {current}): all are bundled")
        return found
    if len(found) > len(chosen):
        notes.append(f"left out {len(found) - len(chosen)} other machine images "
                     f"({', '.join(r.ref for r in found if r not in chosen)})")
    return chosen


def plan(labs: list[LoadedLab], settings: Settings, log: Log) -> Plan:
    """Every member the bundle for ``labs`` gets, and notes on what is not there."""
    notes: list[str] = []
    docker_ok, detail = docker_daemon()
    host: list[ImageRef] = []
    if docker_ok:
        host = _machine_images(log, notes)
    else:
        notes.append(f"dockerd is not reachable ({detail}): no docker images in the bundle")
    bundled = needs.bundle_images_dir()
    index = needs.images_dir_index(str(bundled)) if bundled.is_dir() else {}
    index.update(needs.images_dir_index(settings.images_dir))  # the images folder wins
    sources: list[Source] = []
    entries = []
    for loaded in labs:
        entry = LabEntry(name=loaded.name, fingerprint=lab_fingerprint(loaded),
                         needs_images=list(loaded.lab.needs.images))
        if docker_ok:
            lab_images = _lab_images(log, loaded.name)
            entry.lab_images = [r.ref for r in lab_images]
            host += lab_images
            if not lab_images:
                entry.notes.append(f"no lab images built here ({LAB_IMAGE_REPO}{loaded.name}-*): "
                                   "its machines build the lab from the machine image")
        sources += _needs_sources(loaded, entry, index, docker_ok, log)
        entries.append(entry)
    if host:
        unique_refs = list({r.ref: r for r in host}.values())
        sources.insert(0, Source("docker-images", "docker-images.tar", "zstd", refs=unique_refs))
    cache = paths.cache_dir()
    for p in sorted(cache.glob("rootfs-*.tar.gz")):
        sources.append(Source("rootfs", p.name, "none", path=p, meta=rootfs.rootfs_meta(p)))
    if not any(s.kind == "rootfs" for s in sources):
        notes.append(f"no rootfs tarball in {cache}: machines build the labs' base image from the apt mirror")
    for p in sorted((cache / "boxes").glob("*.box")):
        sources.append(Source("box", p.name, "zstd", path=p, meta=_read_json(p.with_name(p.name + ".json"))))
    unique = list({s.member: s for s in sources}.values())  # two labs needing one image share its tarball
    return Plan(unique, entries, notes)
