"""`vagrant ssh-config` output → SshConfig per machine (paramiko's SSHConfig; no Vagrant run)."""
from __future__ import annotations

import glob
import shutil
import subprocess

import pytest

from vmdock.driver import SshConfig, parse_ssh_config, vagrant_env

# Exactly as Vagrant 2.3.4's templates/commands/ssh_config/config.erb writes it
# (blank line before each IdentityFile; a path with a space is quoted, one
# without is not; the docker provider reports the container's address, port 22).
TWO_MACHINES = """\
Host web
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no

  IdentityFile "/home/stu dent/My Labs/vmdock home/labs/ch6-lamp/.vagrant/machines/web/virtualbox/private_key"

  IdentityFile /home/student/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL

Host db
  Include /home/stu dent/.ssh/extra config
  HostName 172.17.0.3
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no

  IdentityFile "/home/stu dent/.vagrant.d/insecure_private_key"
  IdentitiesOnly yes
  LogLevel ERROR
  ForwardAgent yes
  ForwardX11 yes
  ProxyCommand ssh -W %h:%p -q jump@example.org
"""


def test_two_machines():
    configs = parse_ssh_config(TWO_MACHINES)
    assert sorted(configs) == ["db", "web"]
    assert configs["web"] == SshConfig(
        host="127.0.0.1",
        port=2222,
        user="vagrant",
        identity_files=(
            "/home/stu dent/My Labs/vmdock home/labs/ch6-lamp/.vagrant/machines/web/virtualbox/private_key",
            "/home/student/.vagrant.d/insecure_private_key",
        ),
    )
    assert configs["db"] == SshConfig("172.17.0.3", 22, "vagrant", ("/home/stu dent/.vagrant.d/insecure_private_key",))
    assert isinstance(configs["web"].port, int)


def test_crlf_tabs_comments_and_case():
    text = TWO_MACHINES.replace("\n", "\r\n").replace("  HostName", "\tHOSTNAME").replace("  Port", "\tport")
    text = "# vagrant ssh-config\r\n" + text
    configs = parse_ssh_config(text)
    assert configs["web"].host == "127.0.0.1" and configs["web"].port == 2222
    assert configs["db"].host == "172.17.0.3" and configs["db"].port == 22
    assert configs["web"].identity_files[0].endswith("/virtualbox/private_key")


def test_defaults_and_hosts_without_an_address():
    text = "Host a\n  HostName 10.0.0.5\nHost b\n  User root\n  Port 2200\n"
    configs = parse_ssh_config(text)
    assert configs == {"a": SshConfig("10.0.0.5", 22, "vagrant", ())}


@pytest.mark.parametrize("text", ["", "\n\n", "Vagrant could not find a running machine\n", "  HostName 1.2.3.4\n"])
def test_nothing_to_parse(text):
    assert parse_ssh_config(text) == {}


def test_round_trip_through_the_state_file():
    for cfg in parse_ssh_config(TWO_MACHINES).values():
        assert SshConfig.from_dict(cfg.to_dict()) == cfg
    assert SshConfig.from_dict({"host": "h", "port": "2222", "user": "u"}) == SshConfig("h", 2222, "u", ())


def test_vagrant_env(monkeypatch):
    monkeypatch.setenv("VAGRANT_CWD", "/somewhere/else")
    monkeypatch.setenv("VAGRANT_VAGRANTFILE", "Other")
    monkeypatch.delenv("VAGRANT_CHECKPOINT_DISABLE", raising=False)
    env = vagrant_env("docker")
    assert "VAGRANT_CWD" not in env and "VAGRANT_VAGRANTFILE" not in env
    assert env["VAGRANT_CHECKPOINT_DISABLE"] == "1" and env["VAGRANT_DEFAULT_PROVIDER"] == "docker"
    monkeypatch.setenv("VAGRANT_CHECKPOINT_DISABLE", "0")  # a user's own choice is kept
    assert vagrant_env(None)["VAGRANT_CHECKPOINT_DISABLE"] == "0"


VAGRANT_TEMPLATES = sorted(
    glob.glob("/usr/share/rubygems-integration/all/gems/vagrant-*/templates/commands/ssh_config/config.erb")
    + glob.glob("/opt/vagrant/embedded/gems/gems/vagrant-*/templates/commands/ssh_config/config.erb")
)

ERB = r"""
require "erb"
t = ERB.new(File.read(ARGV[0]), trim_mode: "-")
def r(t, h)
  b = binding
  h.each { |k, v| b.local_variable_set(k, v) }
  t.result(b)
end
base = {config: nil, verify_host_key: false, keys_only: true, log_level: nil,
        forward_agent: false, forward_x11: false, proxy_command: nil}
print r(t, base.merge(host_key: "web", ssh_host: "127.0.0.1", ssh_user: "vagrant", ssh_port: 2222,
                      private_key_path: ["/a b/web key", "/plain/key"]))
print r(t, base.merge(host_key: "db", ssh_host: "172.17.0.3", ssh_user: "student", ssh_port: 22,
                      config: "/x y/cfg", verify_host_key: :never, private_key_path: ["/k"],
                      forward_agent: true, proxy_command: "ssh -W %h:%p jump"))
"""


@pytest.mark.skipif(not (VAGRANT_TEMPLATES and shutil.which("ruby")), reason="needs Vagrant's own template and ruby")
def test_the_installed_vagrants_own_template(tmp_path):
    """Render the installed Vagrant's ssh-config template with ERB, then parse it."""
    script = tmp_path / "erb.rb"
    script.write_text(ERB)
    out = subprocess.run(["ruby", str(script), VAGRANT_TEMPLATES[-1]], capture_output=True, text=True, timeout=60, check=True).stdout
    assert parse_ssh_config(out) == {
        "web": SshConfig("127.0.0.1", 2222, "vagrant", ("/a b/web key", "/plain/key")),
        "db": SshConfig("172.17.0.3", 22, "student", ("/k",)),
    }
