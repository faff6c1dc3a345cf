"""Lab images: a lab's machines saved after its steps, to start the next `up` from.

A lab image is made per machine by the provider (``Provider.capture``) from a
lab that is up and passes ``verify``.  It carries, in labels:

- ``vmdock.fingerprint``: what made it: the base (below) and the lab folder
  (definition and files);
- ``vmdock.base``: what its machines rest on: the machine image, vmdock's
  provisioners and templates, the settings that reach the machines, vmdock's
  version.  An image whose base differs is stale: never used;
- ``vmdock.steps``: the plan items it contains, in order;
- ``vmdock.state``: what vmdock must know to go on from it (the items' chained
  fingerprints, each machine's identity, the lab's exports and secrets: they
  are in the machines' files already).

`vmdock up` takes the newest image of the lab whose base matches and whose
items are all wanted (an image with every step is not used for `--no-steps`);
the steps changed since it was made run again, by their fingerprints.
Images are named by content, shared by every vmdock home on the host, and kept
by `destroy` (`vmdock prune` removes those no lab uses).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import __version__, paths
from .state import hash_paths

if TYPE_CHECKING:
    from .loader import LoadedLab
    from .settings import Settings

ROLE = "lab-image"
LABEL_PREFIX = "vmdock."


@dataclass(frozen=True)
class LabImage:
    tag: str
    lab: str
    machine: str
    provider: str
    fingerprint: str
    base: str
    steps: tuple[str, ...]
    built_at: str
    version: str
    size: int = 0
    state: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_labels(cls, tag: str, labels: dict[str, str], size: int = 0) -> LabImage | None:
        """The image described by its labels; None when they are not a lab image's."""
        def get(key: str) -> str:
            return labels.get(LABEL_PREFIX + key, "")

        if get("role") != ROLE:
            return None
        try:
            steps = tuple(json.loads(get("steps") or "[]"))
            state = json.loads(get("state") or "{}")
        except ValueError:
            return None
        return cls(tag, get("lab"), get("machine"), get("provider"), get("fingerprint"), get("base"),
                   steps, get("built-at"), get("version"), size, state)

    def labels(self) -> dict[str, str]:
        return {
            LABEL_PREFIX + "role": ROLE,
            LABEL_PREFIX + "lab": self.lab,
            LABEL_PREFIX + "machine": self.machine,
            LABEL_PREFIX + "provider": self.provider,
            LABEL_PREFIX + "fingerprint": self.fingerprint,
            LABEL_PREFIX + "base": self.base,
            LABEL_PREFIX + "steps": json.dumps(list(self.steps)),
            LABEL_PREFIX + "state": json.dumps(self.state, sort_keys=True),
            LABEL_PREFIX + "built-at": self.built_at,
            LABEL_PREFIX + "version": self.version,
        }


def _dir_hash(folder) -> str:
    return hash_paths(folder, [p.name for p in sorted(folder.iterdir())]) if folder.is_dir() else ""


def base_fingerprint(settings: Settings, provider: str, machine_image: str) -> str:
    """What a lab image's machines rest on, besides the lab itself."""
    h = hashlib.sha256()
    for part in (
        f"vmdock {__version__}",
        f"provider {provider}",
        f"machine image {machine_image}",
        f"provisioners {_dir_hash(paths.PROVISIONERS_DIR)}",
        f"templates {_dir_hash(paths.TEMPLATES_DIR)}",
        # Not the apt mirrors: where packages come from is not what the machines are
        # (a bundle's images serve a classroom whose mirror differs, or does not answer).
        json.dumps([settings.docker_source, settings.docker_ce_mirror, list(settings.registry_mirrors),
                    list(settings.insecure_registries), settings.pull_base]),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def lab_fingerprint(base: str, loaded: LoadedLab) -> str:
    """The base and the lab folder (lab.yaml and every file)."""
    return hashlib.sha256(f"{base}\0{_dir_hash(loaded.folder)}".encode()).hexdigest()


def image_tag(lab: str, machine: str, fingerprint: str, steps: int) -> str:
    """``vmdock/lab-<lab>-<machine>:<fingerprint>-s<steps>`` (Docker's reference rules: lower
    case); ``steps``: how many of the lab's steps it holds (0: the student-mode lab)."""
    repo = re.sub(r"[^a-z0-9._-]+", "-", f"lab-{lab}-{machine}".lower()).strip("-._")
    return f"vmdock/{repo}:{fingerprint[:16]}-s{steps}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Choice:
    """The lab images `up` starts from (machine → image), and what to tell the user."""

    images: dict[str, LabImage]
    notes: list[str]


def choose(found: list[LabImage], machines: list[str], base: str, fingerprint: str, wanted: list[str]) -> Choice:
    """The best complete set of images (one per machine, same fingerprint and items) whose
    base is ``base`` and whose items are all in ``wanted`` (the plan `up` is asked for): exact
    fingerprint first, then the most items, then the newest.  Stale images are named in the
    notes, never used."""
    sets: dict[tuple[str, tuple[str, ...], str], dict[str, LabImage]] = {}
    for image in found:  # the images of one `image build` share their fingerprint, items and time
        sets.setdefault((image.fingerprint, image.steps, image.built_at), {})[image.machine] = image
    notes: list[str] = []
    usable = []
    wanted_set = set(wanted)
    for (fp, steps, _), by_machine in sets.items():
        if set(by_machine) != set(machines):
            continue
        sample = next(iter(by_machine.values()))
        if sample.base != base:
            notes.append(f"lab image {sample.tag} is stale (built by vmdock {sample.version or '?'} on another "
                         "machine image, provisioners or settings): not used")
            continue
        if not set(steps) <= wanted_set:
            notes.append(f"lab image {sample.tag} holds steps this `up` does not ask for: not used "
                         f"(`vmdock image build {sample.lab} --no-steps` makes a student-mode image)")
            continue
        usable.append((fp == fingerprint, len(steps), sample.built_at, by_machine))
    if not usable:
        return Choice({}, notes)
    exact, _, _, best = max(usable, key=lambda u: (u[0], u[1], u[2]))
    if not exact:
        notes.append("the lab changed since its image was built: the changed steps run again")
    return Choice(best, notes)
