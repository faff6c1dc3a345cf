"""The Vagrant driver: python-vagrant, wrapped so that no failure is lost.

python-vagrant drops stderr unless given ``err_cm`` and some of its calls hand
back '' on failure; here every call's stdout and stderr go to the lab's log
with the command's duration, and a failed call raises ``CommandError`` with the
tail of stderr.  ``vagrant ssh-config`` is asked once for all machines.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    def from_dict(cls, d: dict) -> SshConfig:
        return cls(d["host"], int(d["port"]), d["user"], tuple(d.get("identity_files", ())))


def parse_ssh_config(text: str) -> dict[str, SshConfig]:
    """Parse `vagrant ssh-config` output (one Host block per machine) with paramiko's SSHConfig.

    A Host block without a HostName (or a pattern such as ``*``) names no machine.
    """
    from paramiko import SSHConfig  # paramiko is heavy: only for `up`

    config = SSHConfig.from_text(text.replace("\r\n", "\n"))
    out = {}
    for name in sorted(config.get_hostnames()):
        if any(c in name for c in "*?!"):
            continue
        entry = config.lookup(name)
        if entry.get("hostname", name) == name:  # paramiko fills in the alias when HostName is missing
            continue
        out[name] = SshConfig(
            host=entry["hostname"],
            port=int(entry.get("port", 22)),
            user=entry.get("user", "vagrant"),
            identity_files=tuple(entry.get("identityfile", ())),
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
        import vagrant as pyvagrant  # python-vagrant; imported where Vagrant is really run

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


def machine_id(root: Path, machine: str) -> str | None:
    """The provider's id of a machine (container id, domain uuid), from Vagrant's own files."""
    for f in (Path(root) / ".vagrant" / "machines" / machine).glob("*/id"):
        text = f.read_text().strip()
        if text:
            return text
    return None
