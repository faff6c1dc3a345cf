"""The providers vmdock knows, in order of preference, and which one to use.

The ONE list of provider names: settings, render, doctor and the CLI read it
here.  Adding a provider: a module with a ``Provider`` class, a line in
``PROVIDERS``, a block in ``Vagrantfile.j2``.  A provider's module is imported
when the provider is first used: the names alone (the CLI's help, settings)
cost nothing.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError, ProviderError
from .base import NOT_CREATED, RUNNING, Probe, Provider, Pruned

#: name → (module, class), in order of preference (the first usable one is chosen)
PROVIDERS: dict[str, tuple[str, str]] = {
    "virtualbox": ("virtualbox", "VirtualBoxProvider"),
    "libvirt": ("libvirt", "LibvirtProvider"),
    "docker": ("docker", "DockerProvider"),
}
NAMES = tuple(PROVIDERS)


def provider_class(name: str) -> type[Provider]:
    """The ``Provider`` class of provider ``name`` (one of NAMES)."""
    module, cls = PROVIDERS[name]
    found: type[Provider] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return found


def get(name: str, mirror: str | None = None) -> Provider:
    """The provider called ``name`` (``mirror``: the apt mirror machine images are built from)."""
    if name not in PROVIDERS:
        raise ConfigError(f"unknown provider {name!r} (providers: {', '.join(NAMES)})")
    return provider_class(name)(mirror)


def probe_all() -> list[Probe]:
    return [provider_class(name)().probe() for name in NAMES]


def choose(requested: str | None, source: str = "--provider", mirror: str | None = None) -> tuple[Provider, str]:
    """Return (provider, why).  Raises ProviderError when none can work."""
    if requested:
        provider = get(requested, mirror)
        probe = provider.probe()
        if not probe.usable:
            raise ProviderError(
                f"provider {requested} (from {source}) cannot work here: {probe.reason}",
                hint="`vmdock doctor` shows every provider's state",
            )
        return provider, f"{requested}, as {source} asks ({probe.reason})"
    probes = probe_all()
    for i, probe in enumerate(probes):
        if probe.usable:
            skipped = "; ".join(f"{p.provider}: {p.reason}" for p in probes[:i])
            why = f"{probe.provider}, the first usable of {', '.join(NAMES)}"
            why += f" (skipped {skipped})" if skipped else ""
            return get(probe.provider, mirror), why
    raise ProviderError(
        "no usable provider: " + "; ".join(f"{p.provider}: {p.reason}" for p in probes),
        hint="install VirtualBox, or vagrant-libvirt with libvirtd running, or docker.io with dockerd running; "
        "`vmdock doctor` explains",
    )


__all__ = ["NAMES", "NOT_CREATED", "PROVIDERS", "RUNNING", "Probe", "Provider", "Pruned", "choose", "get", "probe_all",
           "provider_class"]
