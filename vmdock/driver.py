"""The Vagrant driver: python-vagrant, wrapped so that no failure is lost.

python-vagrant drops stderr unless given ``err_cm`` and some of its calls hand
back '' on failure; here every call's stdout and stderr go to the lab's log
with the command's duration, and a failed call raises ``CommandError`` with the
tail of stderr.  ``vagrant ssh-config`` is asked once for all machines.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import vagrant as pyvagrant

from .errors import CommandError, tail
from .runlog import Log


@dataclass(frozen=True)
class SshConfig:
    host: str
    port: int
    user: str
    identity_files: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "identity_files": list(self.identity_files)}

    @classmethod
    def from_dict(cls, d: dict) -> "SshConfig":
        return cls(d["host"], int(d["port"]), d["user"], tuple(d.get("identity_files", ())))


def parse_ssh_config(text: str) -> dict[str, SshConfig]:
    """Parse `vagrant ssh-config` output (one Host block per machine)."""
    blocks: dict[str, dict] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(\S+)\s+(.*)$", line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2).strip()
        if key == "host":
            current = blocks.setdefault(value, {"identityfile": []})
        elif current is not None:
            if key == "identityfile":
                current["identityfile"].append(value.strip('"'))
            else:
                current[key] = value.strip('"')
    out = {}
    for name, b in blocks.items():
        if "hostname" not in b:
            continue
        out[name] = SshConfig(
            host=b["hostname"],
            port=int(b.get("port", 22)),
            user=b.get("user", "vagrant"),
            identity_files=tuple(b["identityfile"]),
        )
    return out


def vagrant_env(provider: str | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")  # no phoning home: offline classrooms
    env.setdefault("VAGRANT_NO_COLOR", "1")
    env.pop("VAGRANT_CWD", None)
    env.pop("VAGRANT_VAGRANTFILE", None)
    if provider:
        env["VAGRANT_DEFAULT_PROVIDER"] = provider
    return env


class VagrantDriver:
    def __init__(
        self,
        root: Path,
        log: Log,
        *,
        lab: str,
        provider: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ):
        self.root = Path(root)
        self.log = log
        self.lab = lab
        self.provider = provider
        self.on_line = on_line
        self._stderr_path: str | None = None
        self._v = pyvagrant.Vagrant(
            root=str(self.root),
            env=vagrant_env(provider),
            out_cm=self._out_cm,
            err_cm=self._err_cm,
        )

    # python-vagrant calls these for every command --------------------------
    @contextlib.contextmanager
    def _out_cm(self):
        with open(self.log.path, "a", encoding="utf-8") as fh:
            yield fh

    @contextlib.contextmanager
    def _err_cm(self):
        fd, path = tempfile.mkstemp(prefix="vmdock-vagrant-err-")
        self._stderr_path = path
        with os.fdopen(fd, "w+", encoding="utf-8") as fh:
            yield fh

    def _stderr(self) -> str:
        path, self._stderr_path = self._stderr_path, None
        if not path:
            return ""
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        finally:
            os.unlink(path)
        if text.strip():
            self.log.write("".join(f"    ! {line}\n" for line in text.splitlines()))
        return text

    def _call(self, what: str, fn, *args, machine: str | None = None, **kw):
        cmd = f"vagrant {what}"
        self.log.event(f"host$ {cmd}  (started, in {self.root})")
        start = time.monotonic()
        try:
            result = fn(*args, **kw)
            if hasattr(result, "__next__"):  # a stream: consume it here
                for line in result:
                    line = line.rstrip("\n")
                    self.log.write(f"    {line}")
                    if self.on_line:
                        self.on_line(line)
                result = None
        except subprocess.CalledProcessError as exc:
            stderr = self._stderr()
            self.log.command("host", cmd, time.monotonic() - start, exc.returncode)
            out = exc.output.decode("utf-8", "replace") if isinstance(exc.output, bytes) else (exc.output or "")
            raise CommandError(
                f"vagrant {what.split()[0]} failed",
                lab=self.lab,
                machine=machine,
                command=cmd,
                exit_code=exc.returncode,
                stderr_tail=tail(stderr or out),
                log=self.log.path,
            ) from None
        except RuntimeError as exc:  # python-vagrant: executable not found
            self.log.command("host", cmd, time.monotonic() - start, None)
            raise CommandError(
                str(exc), lab=self.lab, command=cmd, log=self.log.path, hint="install Vagrant: apt-get install vagrant"
            ) from None
        except BaseException:
            self._stderr()
            self.log.command("host", cmd, time.monotonic() - start, None)
            raise
        self._stderr()
        self.log.command("host", cmd, time.monotonic() - start, 0)
        return result

    # the verbs vmdock uses ---------------------------------------------------
    def up(self, machine: str | None = None) -> None:
        what = "up" + (f" {machine}" if machine else "") + (f" --provider={self.provider}" if self.provider else "")
        self._call(what, self._v.up, vm_name=machine, provider=self.provider, stream_output=True, machine=machine)

    def halt(self, machine: str | None = None) -> None:
        self._call("halt" + (f" {machine}" if machine else ""), self._v.halt, vm_name=machine, machine=machine)

    def reload(self, machine: str | None = None) -> None:
        self._call("reload" + (f" {machine}" if machine else ""), self._v.reload, vm_name=machine, machine=machine)

    def destroy(self, machine: str | None = None) -> None:
        self._call("destroy -f" + (f" {machine}" if machine else ""), self._v.destroy, vm_name=machine, machine=machine)

    def status(self) -> dict[str, str]:
        """Machine name → Vagrant state (running, not_created, stopped, …)."""
        statuses = self._call("status --machine-readable", self._v.status)
        if not statuses:
            raise CommandError(
                "vagrant status returned nothing", lab=self.lab, command="vagrant status", log=self.log.path
            )
        return {s.name: s.state for s in statuses}

    def ssh_config(self) -> dict[str, SshConfig]:
        """Every running machine's SSH settings, from one `vagrant ssh-config`."""
        text = self._call("ssh-config", self._v.ssh_config)
        configs = parse_ssh_config(text or "")
        if not configs:
            raise CommandError(
                "vagrant ssh-config returned no machines",
                lab=self.lab,
                command="vagrant ssh-config",
                stderr_tail=tail(text or ""),
                log=self.log.path,
            )
        return configs

    def validate(self) -> None:
        self._call("validate", self._v._run_vagrant_command, ["validate"])

    def machine_id(self, machine: str) -> str | None:
        """The provider's id of a machine (container id, domain uuid), from Vagrant's own files."""
        base = self.root / ".vagrant" / "machines" / machine
        for f in base.glob("*/id"):
            text = f.read_text().strip()
            if text:
                return text
        return None
