"""The provider registry and the parsers of the providers' own status commands (no provider run)."""
from __future__ import annotations

import pytest

from vmdock import providers
from vmdock.errors import ConfigError
from vmdock.providers import NOT_CREATED, RUNNING
from vmdock.providers.docker import container_states, ssh_address
from vmdock.providers.libvirt import domain_name, domain_states
from vmdock.providers.virtualbox import vm_state
from vmdock.settings import Settings


def test_one_registry_in_preference_order():
    assert providers.NAMES == ("virtualbox", "libvirt", "docker")
    for name in providers.NAMES:
        p = providers.get(name)
        assert p.name == name and p.on_settings_changed in ("recreate", "reload")
    assert providers.get("docker").on_settings_changed == "recreate"
    with pytest.raises(ConfigError, match="unknown provider 'vmware'"):
        providers.get("vmware")
    with pytest.raises(ConfigError, match="not one of virtualbox, libvirt, docker"):
        Settings.from_env(provider="vmware")


def test_unsupported_lab_images_say_so():
    from vmdock.errors import ProviderError

    with pytest.raises(ProviderError, match="virtualbox provider cannot capture lab images"):
        providers.get("virtualbox").capture(None, "web", "t", {}, None)


def test_docker_ps_states():
    out = "web\trunning\ndb\texited\ncache\tcreated\nbroken line\n\trunning\nrestarting\trestarting\n"
    assert container_states(out) == {"web": RUNNING, "db": "stopped", "cache": "stopped", "restarting": RUNNING}


VIRSH_LIST = """\
 Id   Name                       State
-------------------------------------------
 3    vmdock-ch6-lamp-web        running
 -    vmdock-ch6-lamp-db         shut off
 -    other                      paused
"""


def test_virsh_list_states():
    states = domain_states(VIRSH_LIST)
    assert states == {"vmdock-ch6-lamp-web": RUNNING, "vmdock-ch6-lamp-db": "shutoff", "other": "paused"}
    assert states.get(domain_name("vmdock-ch6-lamp-", "cache"), NOT_CREATED) == NOT_CREATED
    assert domain_name("vmdock-0a1b2c-ch6 lamp-", "we/b") == "vmdock-0a1b2c-ch6lamp-web"  # as vagrant-libvirt cleans it


def test_vboxmanage_state():
    assert vm_state('name="vmdock-ch6-lamp-web"\nVMState="poweroff"\nVMStateChangeTime="x"\n') == "poweroff"
    assert vm_state("nothing here\n") is None


def test_docker_ssh_address():
    ports = ('{"22/tcp":[{"HostIp":"127.0.0.1","HostPort":"2222"}],'
             '"8080/tcp":[{"HostIp":"127.0.0.1","HostPort":"8020"}]}')
    assert ssh_address(ports) == ("127.0.0.1", 2222)
    assert ssh_address('{"22/tcp":[{"HostIp":"0.0.0.0","HostPort":"2200"}]}') == ("127.0.0.1", 2200)
    for unknown in ("null", "{}", '{"22/tcp":null}', "not json", ""):
        assert ssh_address(unknown) is None


def test_docker_knows_vagrants_network_race():
    docker = providers.get("docker")
    raced = ('Command: ["docker", "inspect", "516c90d5501c", {:notify=>[:stdout, :stderr]}]\n'
             "Stderr: Error: No such object: 516c90d5501c")
    assert docker.transient_up_failure(raced)
    assert not docker.transient_up_failure("Stderr: Error: No such image: vmdock/machine:x")
    assert not providers.get("libvirt").transient_up_failure(raced)
