"""Lab model → Vagrantfile: every value reaches Ruby as exactly the Python value.

The rendered files are read by real Ruby: ``ruby -c`` for syntax, and a small
harness that stubs ``Vagrant.configure`` and records every value the file
assigns or passes, as bytes, so a test can compare them with the Python
strings exactly.  The harness also replaces ``system``, backticks and friends,
so an injection shows up as a recorded shell call, never as a run command.
Real Vagrant parses one rendered file (``vagrant validate``).
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest
import yaml

from vmdock import paths, render
from vmdock.errors import ConfigError, LabError
from vmdock.loader import LoadedLab, load_lab
from vmdock.model import ForwardedPort, Lab, Machine
from vmdock.ruby import ruby, ruby_string

from .seating import SEAT_SUBNET, seat_of

RUBY = shutil.which("ruby")
VAGRANT = shutil.which("vagrant")
needs_ruby = pytest.mark.skipif(not RUBY, reason="ruby is not installed")

PWNED = Path("/tmp/pwned")
HOSTILE = [
    '"; system("touch /tmp/pwned"); "',
    "#{`touch /tmp/pwned`}",
    "\\\"",
    "\\\\\"",
    "'",
    "'; system('touch /tmp/pwned'); '",
    "\n",
    "\nsystem(\"touch /tmp/pwned\")\n#",
    "\u0000",
    "a\u0000b",
    "中文：《Docker开发实践》",
    "#@x #$0 #@@y #{1+1}",
    "\\u{41}\\x41\\101\\n",
    "\r\t\x0b\x0c\x1b[31m\x7f",
    "\u2028\u2029\u200b\u202e\ufeff\U0001f433",
    "\n__END__\n",
    "\n=begin\n",
    "%q{x} %w[a] ?a :sym",
    "\\",
    "",
]
SHELL_STUBS = ("system", "exec", "spawn", "`", "fork")

HARNESS = r'''
require "json"
LOG = []

module Enc
  def self.enc(v)
    case v
    when ::String then {"s" => v.b.unpack1("H*"), "enc" => v.encoding.name}
    when ::Symbol then {"sym" => v.to_s}
    when ::Array then v.map { |x| enc(x) }
    when ::Hash then {"hash" => v.map { |k, x| [enc(k), enc(x)] }}
    when nil, true, false, ::Integer, ::Float then v
    else {"other" => v.class.name}
    end
  end
end

module Kernel
  %w[system exec spawn ` fork].each do |m|
    define_method(m) { |*a, **k| ::LOG << {"op" => "shell", "via" => m, "args" => a.map(&:to_s)}; "" }
    define_singleton_method(m) { |*a, **k| ::LOG << {"op" => "shell", "via" => m, "args" => a.map(&:to_s)}; "" }
  end
end

class Rec < BasicObject
  def initialize(path)
    @path = path
  end

  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    if n.end_with?("=")
      ::LOG << {"op" => "set", "path" => @path + [n.chomp("=")], "value" => ::Enc.enc(args[0])}
      return args[0]
    end
    if !args.empty? || !kw.empty? || blk
      ::LOG << {"op" => "call", "path" => @path + [n], "args" => ::Enc.enc(args), "kw" => ::Enc.enc(kw)}
    end
    if blk
      blk.call(::Rec.new(@path + [[n, ::Enc.enc(args[0])]]))
      return nil
    end
    ::Rec.new(@path + [n])
  end

  def respond_to_missing?(*) = true
end

module Vagrant
  def self.configure(version, &blk)
    ::LOG << {"op" => "configure", "version" => ::Enc.enc(version)}
    blk.call(::Rec.new(["config"]))
  end
end

load ARGV[0]
STDOUT.write(JSON.generate(LOG))
'''

VALUES_HARNESS = r'''
require "json"
def enc(v)
  case v
  when String then {"s" => v.b.unpack1("H*"), "enc" => v.encoding.name}
  when Array then v.map { |x| enc(x) }
  when Hash then {"hash" => v.map { |k, x| [enc(k), enc(x)] }}
  when nil, true, false, Integer, Float then v
  else {"other" => v.class.name}
  end
end
VALUES = eval(File.read(ARGV[0], encoding: "UTF-8"), binding, ARGV[0])
STDOUT.write(JSON.generate(enc(VALUES)))
'''


# -- helpers ---------------------------------------------------------------------

def dec(v):
    """Decode the harness's JSON back to Python values (strings byte-exact)."""
    if isinstance(v, list):
        return [dec(x) for x in v]
    if isinstance(v, dict):
        if "s" in v:
            assert v["enc"] == "UTF-8", v
            return bytes.fromhex(v["s"]).decode("utf-8", "surrogateescape")
        if "sym" in v:
            return ":" + v["sym"]
        if "hash" in v:
            return {(k[1:] if k.startswith(":") else k): x for k, x in ((dec(a), dec(b)) for a, b in v["hash"])}
        raise AssertionError(f"unexpected Ruby value {v}")
    return v


def _path(p) -> tuple:
    return tuple(tuple(dec(x)) if isinstance(x, list) else x for x in p)


class Recorded:
    """What a Vagrantfile did, as the harness saw it."""

    def __init__(self, events: list[dict]):
        self.events = events
        self.sets = {}
        self.calls = []
        self.shell = []
        for e in events:
            if e["op"] == "set":
                self.sets[_path(e["path"])] = dec(e["value"])
            elif e["op"] == "call":
                self.calls.append((_path(e["path"]), dec(e["args"]), dec(e["kw"])))
            elif e["op"] == "shell":
                self.shell.append(e)

    def machines(self) -> list[str]:
        return [args[0] for path, args, kw in self.calls if path == ("config", "vm", "define")]

    def node(self, machine: str, *attr: str):
        return self.sets[("config", "vm", ("define", machine), "vm", *attr)]

    def node_calls(self, machine: str, method: str) -> list[tuple[list, dict]]:
        want = ("config", "vm", ("define", machine), "vm", method)
        return [(args, kw) for path, args, kw in self.calls if path == want]

    def provider(self, machine: str, provider: str) -> dict:
        prefix = ("config", "vm", ("define", machine), "vm", ("provider", provider))
        return {p[-1]: v for p, v in self.sets.items() if p[:-1] == prefix}


def ruby_syntax_ok(file: Path) -> None:
    res = subprocess.run([RUBY, "-c", str(file)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stderr


def run_vagrantfile(tmp_path: Path, text: str) -> Recorded:
    """Check the syntax with ``ruby -c``, then run the file under the harness."""
    before = PWNED.exists()
    vf = tmp_path / "rendered" / "Vagrantfile"
    vf.parent.mkdir(parents=True, exist_ok=True)
    vf.write_text(text, encoding="utf-8")
    ruby_syntax_ok(vf)
    harness = tmp_path / "harness.rb"
    harness.write_text(HARNESS, encoding="utf-8")
    res = subprocess.run([RUBY, str(harness), str(vf)], capture_output=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode("utf-8", "replace")
    rec = Recorded(json.loads(res.stdout))
    assert rec.shell == [], "the Vagrantfile ran a command"
    assert rec.events[0] == {"op": "configure", "version": {"s": b"2".hex(), "enc": "UTF-8"}}
    assert before or not PWNED.exists()
    return rec


def ruby_values(tmp_path: Path, literals: list[str]) -> list:
    """Evaluate ``[lit, lit, …]`` in real Ruby; return the values (strings byte-exact)."""
    src = tmp_path / "values.rb"
    src.write_text("# -*- coding: utf-8 -*-\n[\n" + ",\n".join(literals) + "\n]\n", encoding="utf-8")
    ruby_syntax_ok(src)
    harness = tmp_path / "values-harness.rb"
    harness.write_text(VALUES_HARNESS, encoding="utf-8")
    res = subprocess.run([RUBY, str(harness), str(src)], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode("utf-8", "replace")
    return dec(json.loads(res.stdout))


def loaded(lab: Lab, folder: Path) -> LoadedLab:
    return LoadedLab(lab=lab, folder=folder)


def make_lab_folder(folder: Path, data: dict) -> LoadedLab:
    """Write ``data`` as lab.yaml in ``folder`` and load it the real way."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lab.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_lab(folder)


def docker_opts(image: str = "vmdock/fake-machine:test", create_args=()) -> render.RenderOptions:
    return render.RenderOptions("docker", {"machine_image": image, "create_args": list(create_args)})


def libvirt_opts(domain_type: str = "qemu") -> render.RenderOptions:
    return render.RenderOptions("libvirt", {"domain_type": domain_type})


# -- ruby(): Python values as Ruby literals ------------------------------------------------

@pytest.mark.parametrize("value,literal", [
    (None, "nil"),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (-42, "-42"),
    (2**70, str(2**70)),
    (1.5, "1.5"),
    ("", '""'),
    ("abc", '"abc"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ("#{x}", '"\\#{x}"'),
    ("\n\t\r", '"\\n\\t\\r"'),
    ("\x00", '"\\u{0}"'),
    ("\u2028", '"\\u{2028}"'),
    ("中文", '"中文"'),
    ([1, "a", None], '[1, "a", nil]'),
    ((True,), "[true]"),
    ({"k": [1]}, '{"k" => [1]}'),
    ({1: 2}, '{"1" => 2}'),
    ([], "[]"),
    ({}, "{}"),
])
def test_ruby_literal(value, literal):
    assert ruby(value) == literal


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": math.inf}])
def test_ruby_refuses_non_finite_floats(value):
    with pytest.raises(ValueError):
        ruby(value)


@pytest.mark.parametrize(
    "value", [Path("/x"), b"bytes", {1, 2}, object(), Decimal("1.5"), 1j, [Path("/x")], {"k": b""}]
)
def test_ruby_refuses_unknown_types(value):
    with pytest.raises(TypeError):
        ruby(value)


def test_ruby_refuses_lone_surrogates_it_cannot_write():
    with pytest.raises(ValueError):
        ruby("\ud800")


def test_ruby_string_never_leaves_a_raw_quote_hash_or_line_break():
    rng = random.Random(1234)
    pool = list('"\\#{}\'`$@\n\r\t\x00\x1b\x7f\u2028\u2029\x85 a中') + ["\U0001f433"]
    for _ in range(2000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        lit = ruby_string(s)
        body = lit[1:-1]
        assert lit[0] == lit[-1] == '"'
        assert not re.search(r'(?<!\\)(\\\\)*"', body), lit  # every " is escaped
        assert not re.search(r'(?<!\\)(\\\\)*#', body), lit  # so is every #
        assert not any(c in body for c in "\n\r\x00\x85\u2028\u2029"), lit


@needs_ruby
def test_ruby_literals_mean_the_same_in_real_ruby(tmp_path):
    rng = random.Random(99)
    pool = [chr(c) for c in range(0, 0x250)] + list("\u2028\u2029\u200b\u202e\ufeff\ufffd中文《》")
    pool += ["\U0001f433", "\U000e0001"]
    randoms = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 20))) for _ in range(300)]
    values = [
        *HOSTILE,
        "".join(chr(c) for c in range(0, 0x300)),
        "\udcff\udc80 raw bytes \udce9 x",  # surrogateescape: a path that is not UTF-8
        *randoms,
        0, -1, 2**70, -(2**65), 1.5, -0.0, 1e-7, 1e300, 2.0**-1074, 0.1 + 0.2,
        True, False, None,
        [1, ["nested", None], {"k": "v"}],
        {"a\"b": "#{x}", "中": [1.25]},
    ]
    got = ruby_values(tmp_path, [ruby(v) for v in values])
    assert len(got) == len(values)
    for want, seen in zip(values, got, strict=True):
        if isinstance(want, dict):
            want = {str(k): v for k, v in want.items()}
        assert seen == want and type(seen) is type(want), (want, seen)
    assert math.copysign(1, got[[i for i, v in enumerate(values) if v == 0 and isinstance(v, float)][0]]) == -1


# -- the template environment ------------------------------------------------------

def test_template_env_refuses_unfiltered_values():
    env = render._environment()
    with pytest.raises(TypeError, match="without the `ruby` filter"):
        env.from_string("{{ x }}").render(x="a")
    with pytest.raises(TypeError):
        env.from_string('{{ "literal" }}').render()
    with pytest.raises(TypeError):
        env.from_string("{{ x | ruby ~ '' }}").render(x="a")  # concatenation is a plain str again
    with pytest.raises(TypeError):
        env.from_string("{{ x | ruby | upper }}").render(x="a")
    with pytest.raises(TypeError):
        env.from_string("{{ x | ruby | safe }}").render(x="a")
    assert env.from_string("v = {{ x | ruby }}").render(x='a"#{b}') == 'v = "a\\"\\#{b}"'
    assert env.from_string("{% if x %}plain text{% endif %}").render(x=True) == "plain text"


def test_template_env_refuses_undefined_values():
    # (ruby() reports it as an unknown type, not as jinja's "'missing' is undefined")
    with pytest.raises((jinja2.UndefinedError, TypeError), match="Undefined|undefined"):
        render._environment().from_string("{{ missing | ruby }}").render()
    with pytest.raises(jinja2.UndefinedError):
        render._environment().from_string("{% if missing %}{% endif %}").render()


def test_template_file_filters_every_expression():
    """Even branches no test renders: every {{ … }} of Vagrantfile.j2 ends in `| ruby`."""
    text = paths.VAGRANTFILE_TEMPLATE.read_text(encoding="utf-8")
    exprs = re.findall(r"\{\{(.*?)\}\}", text, re.S)
    assert exprs
    for e in exprs:
        assert re.fullmatch(r"\s*[\w.\[\]'\"]+\s*\|\s*ruby\s*", e), e


# -- rendering a lab -------------------------------------------------------------------

GOOD = Path(__file__).resolve().parent / "labs" / "good"


@pytest.fixture
def alpha() -> LoadedLab:
    return load_lab(GOOD / "ch91-alpha")


@needs_ruby
def test_docker_render_of_fixture_lab(tmp_path, alpha):
    text = render.render(alpha, docker_opts(create_args=("--privileged", "--cgroupns=host")), seat_of(alpha))
    rec = run_vagrantfile(tmp_path, text)
    assert rec.sets[("config", "ssh", "insert_key")] is False
    assert rec.machines() == ["web", "db"]
    define = [(a, kw) for p, a, kw in rec.calls if p == ("config", "vm", "define")]
    assert define == [(["web"], {"primary": True}), (["db"], {})]
    seat = seat_of(alpha)
    inst = seat.instance
    ips = render.machine_ips(alpha, SEAT_SUBNET)
    assert ips == {"web": "192.168.56.18", "db": "192.168.56.19"}
    for name in ("web", "db"):
        assert rec.node(name, "hostname") == f"ch91-alpha-{name}"
        nets = rec.node_calls(name, "network")
        # the docker provider takes a prefix length, VirtualBox and libvirt a dotted mask; the
        # network vmdock made for the instance is joined by name
        network = {"ip": ips[name], "netmask": 28, "name": f"vmdock-{inst.id}-ch91-alpha"}
        assert nets[0] == (["private_network"], network)
        d = rec.provider(name, "docker")
        assert d == {
            "image": "vmdock/fake-machine:test",
            "name": f"vmdock-{inst.id}-ch91-alpha-{name}",
            "has_ssh": True,
            "remains_running": True,
            "create_args": ["--privileged", "--cgroupns=host", "--label", f"vmdock.instance={inst.id}",
                            "--label", f"vmdock.home={inst.home}", "--label", "vmdock.lab=ch91-alpha",
                            "--label", f"vmdock.machine={name}"],
        }
        assert ("config", "vm", ("define", name), "vm", "box") not in rec.sets  # docker: no box
    assert rec.node_calls("web", "network")[1] == (
        ["forwarded_port"], {"guest": 80, "host": 8091, "host_ip": "127.0.0.1", "protocol": "tcp"}
    )
    assert len(rec.node_calls("db", "network")) == 1
    assert rec.node_calls("web", "synced_folder") == []  # off by default


@needs_ruby
def test_the_port_offset_moves_the_host_ports_only(tmp_path, alpha):
    rec = run_vagrantfile(tmp_path, render.render(alpha, docker_opts(), seat_of(alpha, offset=1000)))
    assert rec.node_calls("web", "network")[1] == (
        ["forwarded_port"], {"guest": 80, "host": 9091, "host_ip": "127.0.0.1", "protocol": "tcp"}
    )
    with pytest.raises(LabError, match=r"forwarded_ports\[0\]\.host: 8091 \+ port offset 60000 = 68091"):
        render.render(alpha, docker_opts(), seat_of(alpha, offset=60000))


@needs_ruby
@pytest.mark.parametrize("provider", ["virtualbox", "libvirt"])
def test_vm_render_of_fixture_lab(tmp_path, alpha, provider, monkeypatch):
    monkeypatch.delenv("VMDOCK_BOX_URL_DEBIAN12", raising=False)
    # a Vagrant with no boxes: the catalog's name, whatever this host has registered
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant-home"))
    text = render.render(alpha, render.RenderOptions(provider, {"domain_type": "qemu"}), seat_of(alpha))
    rec = run_vagrantfile(tmp_path, text)
    box = render.boxes_catalog()["debian12"][provider]
    for name, cpus, memory in (("web", 1, 512), ("db", 2, 1024)):
        assert rec.node(name, "box") == box
        assert ("config", "vm", ("define", name), "vm", "box_url") not in rec.sets
        # the hostname is only set when the lab sets one (a guest round trip under emulation)
        assert ("config", "vm", ("define", name), "vm", "hostname") not in rec.sets
        ip = render.machine_ips(alpha, SEAT_SUBNET)[name]
        inst = seat_of(alpha).instance
        net = {"ip": ip, "netmask": "255.255.255.240"}
        if provider == "libvirt":  # vagrant-libvirt makes the network under the instance's name
            net["libvirt__network_name"] = f"vmdock-{inst.id}-ch91-alpha"
        assert rec.node_calls(name, "network")[0] == (["private_network"], net)
        p = rec.provider(name, provider)
        assert p["cpus"] == cpus and p["memory"] == memory
        if provider == "libvirt":
            assert p["driver"] == "qemu" and p["default_prefix"] == f"vmdock-{inst.id}-ch91-alpha-"
        else:
            assert p["name"] == f"vmdock-{inst.id}-ch91-alpha-{name}" and p["linked_clone"] is True


@needs_ruby
def test_hostile_strings_through_the_loader(tmp_path):
    """What the schema lets through reaches Ruby unchanged; a hostile host_ip is refused at load."""
    printable = [s for s in HOSTILE if all(c in "\t\n\r" or (c.isprintable() and c != "\u202e") for c in s)]
    addresses = ["127.0.0.1", "0.0.0.0", "::1", "192.168.56.1"]
    data = {
        "name": "ch91-hostile",
        "chapter": 91,
        "title": HOSTILE[0] + HOSTILE[1] + "中文",
        "description": "\n".join(printable),
        "machines": [
            {
                "name": "web",
                "forwarded_ports": [{"guest": 80 + i, "host": 8000 + i, "host_ip": s} for i, s in enumerate(addresses)],
            }
        ],
    }
    lab = make_lab_folder(tmp_path / "labs" / "ch91-hostile", data)
    assert lab.lab.description == "\n".join(printable)  # YAML kept them too
    for provider, opts in (("docker", docker_opts()), ("virtualbox", render.RenderOptions("virtualbox"))):
        rec = run_vagrantfile(tmp_path / provider, render.render(lab, opts, seat_of(lab)))
        forwards = [kw for args, kw in rec.node_calls("web", "network") if args == ["forwarded_port"]]
        assert [kw["host_ip"] for kw in forwards] == addresses, provider
        assert [kw["host"] for kw in forwards] == [8000 + i for i in range(len(addresses))]
    for s in HOSTILE:
        data["machines"][0]["forwarded_ports"] = [{"guest": 80, "host": 8000, "host_ip": s}]
        with pytest.raises(LabError, match=r"machines\[0\]\.forwarded_ports\[0\]\.host_ip: "):
            make_lab_folder(tmp_path / "labs" / "ch91-hostile", data)


@needs_ruby
def test_hostile_strings_bypassing_the_schema(tmp_path):
    """Names are constrained by the schema; the template must not rely on that."""
    for chunk in (HOSTILE[:12], HOSTILE[12:]):  # a lab's network holds 13 machines
        _render_hostile_names(tmp_path / str(len(chunk)), [s for s in chunk if s])


def _render_hostile_names(tmp_path: Path, strings: list[str]) -> None:
    machines = [
        Machine.model_construct(
            name=s,
            hostname=s,
            box="debian12",
            cpus=1,
            memory=512,
            synced_folder=False,
            forwarded_ports=[ForwardedPort.model_construct(guest=1, host=2, host_ip=s, protocol=s)],
        )
        for s in strings
    ]
    evil_name = HOSTILE[0] + "\n" + HOSTILE[1]
    lab = Lab.model_construct(name=evil_name, chapter=91, title=HOSTILE[2], machines=machines, steps=[], checks=[])
    opts = docker_opts(image=HOSTILE[0], create_args=tuple(HOSTILE))
    hostile = loaded(lab, tmp_path)
    rec = run_vagrantfile(tmp_path, render.render(hostile, opts, seat_of(hostile)))
    names = [m.name for m in machines]
    assert rec.machines() == names
    for m in machines:
        assert rec.node(m.name, "hostname") == m.name
        fwd = rec.node_calls(m.name, "network")[1]
        assert fwd == (["forwarded_port"], {"guest": 1, "host": 2, "host_ip": m.name, "protocol": m.name})
        d = rec.provider(m.name, "docker")
        assert d["image"] == HOSTILE[0]
        inst = seat_of(hostile).instance
        assert d["name"] == f"vmdock-{inst.id}-{evil_name}-{m.name}"
        labels = ["--label", f"vmdock.instance={inst.id}", "--label", f"vmdock.home={inst.home}",
                  "--label", f"vmdock.lab={evil_name}", "--label", f"vmdock.machine={m.name}"]
        assert d["create_args"] == [*HOSTILE, *labels]
    # the libvirt branch carries the driver and the prefix
    rec = run_vagrantfile(tmp_path / "lv", render.render(hostile, libvirt_opts(HOSTILE[1]), seat_of(hostile)))
    p = rec.provider(names[0], "libvirt")
    assert p["driver"] == HOSTILE[1] and p["default_prefix"] == f"vmdock-{seat_of(hostile).instance.id}-{evil_name}-"


@needs_ruby
@pytest.mark.parametrize("provider", ["virtualbox", "libvirt"])
def test_hostile_box_url_from_the_environment(tmp_path, alpha, monkeypatch, provider):
    url = "file:///boxes/" + "|".join(h for h in HOSTILE if "\x00" not in h)  # no NUL in an environment
    for i, s in enumerate((url, url + "/latin1-\udce9\udcff")):  # os.environ holds non-UTF-8 bytes so
        monkeypatch.setenv("VMDOCK_BOX_URL_DEBIAN12", s)
        text = render.render(alpha, render.RenderOptions(provider, {"domain_type": "kvm"}), seat_of(alpha))
        rec = run_vagrantfile(tmp_path / str(i), text)
        assert rec.node("web", "box_url") == s
        assert rec.node("db", "box_url") == s


def hostile_folder(tmp_path: Path) -> Path:
    """A lab folder whose path holds quotes, #{}, backslashes, a newline, Chinese and a non-UTF-8 byte."""
    base = tmp_path / 'q"uote' / "a\"; system(\"touch " / "tmp" / 'pwned"); "' / "#{`touch " / "tmp" / "pwned`}"
    base = base / "back\\slash\\\"" / "new\nline 'single' 中文 #@x #$0 \u2028" / "\t%q{"
    os.makedirs(os.fsencode(base / "latin1-") + b"\xe9\xff", exist_ok=True)
    return Path(os.fsdecode(os.fsencode(base / "latin1-") + b"\xe9\xff")) / "ch91-alpha"


def _copy_alpha(dest: Path, **machine_overrides) -> LoadedLab:
    """A copy of the fixture lab ch91-alpha in ``dest``, its machines changed by ``machine_overrides``."""
    shutil.copytree(GOOD / "ch91-alpha", dest)
    text = (dest / "lab.yaml").read_text(encoding="utf-8")
    for key, value in machine_overrides.items():
        text = re.sub(r"^(  - name: (?:web|db)\n)", rf"\1    {key}: {json.dumps(value)}\n", text, flags=re.M)
    (dest / "lab.yaml").write_text(text, encoding="utf-8")
    lab = load_lab(dest)
    for m in lab.lab.machines:
        assert all(getattr(m, k) == v for k, v in machine_overrides.items())
    return lab


@needs_ruby
def test_hostile_lab_folder_path(tmp_path):
    folder = hostile_folder(tmp_path)
    assert 'system("touch /tmp/pwned")' in str(folder) and "#{`touch /tmp/pwned`}" in str(folder)
    lab = _copy_alpha(folder, synced_folder=True)
    assert lab.folder == folder.resolve()
    text = render.render(lab, docker_opts(), seat_of(lab))
    plain = _copy_alpha(tmp_path / "plain" / "ch91-alpha", synced_folder=True)
    assert text.count("\n") == render.render(plain, docker_opts(), seat_of(plain)).count("\n")
    rec = run_vagrantfile(tmp_path, text)
    for name in ("web", "db"):
        assert rec.node_calls(name, "synced_folder") == [([str(folder), "/vagrant"], {})]
    # the path is also in the header comment, and does not break out of it
    header = text.splitlines()[1]
    assert header.startswith("# Rendered by vmdock ") and header.endswith('/lab.yaml".')


# -- real Vagrant ------------------------------------------------------------------------

def vagrant_validate(folder: Path, text: str, *extra: str) -> subprocess.CompletedProcess:
    (folder / "Vagrantfile").write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
    env.update(
        VAGRANT_HOME=str(folder.parent / "vagrant.d"),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_NO_COLOR="1",
        VAGRANT_DEFAULT_PROVIDER="docker",
    )
    return subprocess.run([VAGRANT, "validate", *extra], cwd=folder, env=env, capture_output=True, text=True,
                          errors="surrogateescape", timeout=180)


@pytest.fixture(scope="module")
def vagrant_validate_flags(tmp_path_factory) -> list[str]:
    """`--ignore-provider` if this Vagrant has it (2.2.15+)."""
    if not VAGRANT:
        pytest.skip("vagrant is not installed")
    home = tmp_path_factory.mktemp("vagrant.d")  # not the user's ~/.vagrant.d
    res = subprocess.run([VAGRANT, "validate", "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_HOME": str(home)})
    return ["--ignore-provider"] if "--ignore-provider" in res.stdout + res.stderr else []


def test_real_vagrant_validates_a_hostile_docker_render(tmp_path, vagrant_validate_flags):
    """Vagrant checks a synced folder's host path exists: it passes only if Ruby saw the exact bytes."""
    folder = hostile_folder(tmp_path)
    lab = _copy_alpha(folder, synced_folder=True)
    text = render.render(lab, docker_opts(create_args=tuple(HOSTILE[:8])), seat_of(lab))
    work = tmp_path / "vagrant"
    work.mkdir()
    before = PWNED.exists()
    res = vagrant_validate(work, text)  # provider config too: docker needs image
    assert res.returncode == 0, res.stdout + res.stderr
    if vagrant_validate_flags:
        res = vagrant_validate(work, text, *vagrant_validate_flags)
        assert res.returncode == 0, res.stdout + res.stderr
    assert before or not PWNED.exists()
    # and a path that is not there fails, so the check above means something
    shutil.rmtree(folder)
    res = vagrant_validate(work, text, *vagrant_validate_flags)
    assert res.returncode != 0
    assert f"host path of the shared folder is missing: {folder}" in res.stdout + res.stderr


# -- the rest of render.py ---------------------------------------------------------------

def test_unknown_provider_and_missing_image(alpha):
    with pytest.raises(ConfigError, match="unknown provider 'vmware'"):
        render.render(alpha, render.RenderOptions("vmware"), seat_of(alpha))
    with pytest.raises(ConfigError, match="needs a machine image"):
        render.render(alpha, render.RenderOptions("docker"), seat_of(alpha))
    with pytest.raises(ConfigError, match="needs a domain type"):
        render.render(alpha, render.RenderOptions("libvirt"), seat_of(alpha))


def test_unknown_box_and_missing_provider_version(alpha, monkeypatch):
    monkeypatch.setattr(render, "boxes_catalog", lambda: {"debian12": {"virtualbox": "debian/bookworm64"}})
    with pytest.raises(LabError, match=r"machines\[0\]\.box: box 'debian12' has no libvirt version"):
        render.render(alpha, libvirt_opts(), seat_of(alpha))
    monkeypatch.setattr(render, "boxes_catalog", lambda: {"other": {}})
    with pytest.raises(LabError, match=r"lab\.yaml: machines\[0\]\.box: unknown box 'debian12' \(boxes: other\)"):
        render.render(alpha, render.RenderOptions("virtualbox"), seat_of(alpha))
    # the docker provider builds its own machine image: no box needed
    render.render(alpha, docker_opts(), seat_of(alpha))


def test_machine_ips_skip_the_gateway_and_refuse_too_many_machines(tmp_path):
    def lab_with(n):
        return loaded(Lab.model_validate({"name": "ch9-x", "chapter": 9, "title": "t",
                                          "machines": [{"name": f"m{i}x"} for i in range(n)]}), tmp_path)

    # a /28 has 14 host addresses and the first is the gateway: 13 machines
    ips = render.machine_ips(lab_with(13), SEAT_SUBNET)
    hosts = [str(h) for h in SEAT_SUBNET.hosts()]
    assert list(ips.values()) == hosts[1:14]
    assert hosts[0] not in ips.values()
    # the schema refuses a 14th machine; render does not rely on that
    machines = [Machine.model_construct(name=f"m{i}x") for i in range(14)]
    with pytest.raises(LabError, match="machines: at most 13 machines"):
        render.machine_ips(loaded(Lab.model_construct(name="ch9-x", chapter=9, title="t", machines=machines), tmp_path),
                           SEAT_SUBNET)


def test_default_hostname_is_cut_to_63_characters(tmp_path):
    long = "a" * 32
    spec = {"name": long, "chapter": 9, "title": "t", "machines": [{"name": "b" * 32}]}
    lab = loaded(Lab.model_validate(spec), tmp_path)
    text = render.render(lab, docker_opts(), seat_of(lab))
    assert f'node.vm.hostname = "{(long + "-" + "b" * 32)[:63]}"' in text


def test_write_atomic(tmp_path):
    target = tmp_path / "sub" / "Vagrantfile"
    assert render.write_atomic(target, "one\n") is True
    assert render.write_atomic(target, "one\n") is False
    assert render.write_atomic(target, "two 中文\n") is True
    assert target.read_text(encoding="utf-8") == "two 中文\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["Vagrantfile"]


def test_render_is_deterministic(alpha):
    assert render.render(alpha, docker_opts(), seat_of(alpha)) == render.render(alpha, docker_opts(), seat_of(alpha))
