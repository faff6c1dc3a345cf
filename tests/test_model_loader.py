"""The lab schema and the loader: every error of a file, at once, with its path.

Error lines look like ``path/to/lab.yaml: machines[1].memory: message``; the
tests run with the current directory set so that the path shown is short and
known.
"""
from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from vmdock import labyaml, loader, model
from vmdock.errors import LabError
from vmdock.model import Lab

pytestmark = pytest.mark.usefixtures("vmdock_home", "no_shipped_labs")

FIXTURE_LABS = Path(__file__).resolve().parent / "labs"
GOOD = FIXTURE_LABS / "good"
BROKEN = FIXTURE_LABS / "broken"
AMBIGUOUS = FIXTURE_LABS / "ambiguous"

HEAD = "chapter: 5\ntitle: T\n"


def make_lab(root: Path, name: str, body: str, *, folder: str | None = None, files: dict | None = None) -> Path:
    """Write ``root/<folder or name>/lab.yaml`` = ``name: <name>`` + body; return the folder."""
    d = root / (folder or name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "lab.yaml").write_text(f"name: {name}\n" + textwrap.dedent(body), encoding="utf-8")
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text, encoding="utf-8")
    return d


def errors_of(folder: Path) -> list[str]:
    """The message lines of the LabError raised by loading ``folder``."""
    with pytest.raises(LabError) as info:
        loader.load_lab(folder)
    assert info.value.exit_status == 2
    assert info.value.lab == folder.name
    return info.value.message.splitlines()


def field_errors(lines: list[str], shown: str) -> dict[str, str]:
    """``{field path: message}``; asserts every line starts with ``shown: ``."""
    out = {}
    for line in lines:
        assert line.startswith(shown + ": "), line
        field, _, msg = line[len(shown) + 2 :].partition(": ")
        assert msg, line
        out.setdefault(field, msg)
    return out


@pytest.fixture
def labs(tmp_path, monkeypatch) -> Path:
    """A scratch labs folder, also the current directory (so paths show as ``<lab>/lab.yaml``)."""
    root = tmp_path / "labs"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


# -- valid labs ------------------------------------------------------------------

def test_fixture_lab_loads_with_every_field():
    loaded = loader.load_lab(GOOD / "ch91-alpha")
    lab = loaded.lab
    assert loaded.name == "ch91-alpha"
    assert loaded.folder == (GOOD / "ch91-alpha").resolve()
    assert loaded.file == loaded.folder / "lab.yaml"
    assert [m.name for m in lab.machines] == ["web", "db"]
    assert lab.machines[0].memory == 512 and lab.machines[1].cpus == 2
    assert lab.machines[0].forwarded_ports[0].host_ip == "127.0.0.1"
    assert [c.type for c in lab.checks] == ["command", "http", "port", "container"]
    assert lab.checks[0].contains == ["hello"]  # a single string becomes a list
    assert lab.check_machine(lab.checks[0]) == "web"  # the first machine by default
    assert lab.check_machine(lab.checks[2]) == "db"
    assert lab.targets(lab.steps[0]) == ["web", "db"]


def test_unquoted_on_key_is_the_key_on_not_yaml_true(labs):
    """YAML 1.1 reads a bare `on` as the boolean true; lab files must not."""
    folder = make_lab(labs, "ch5-on", """\
        chapter: 5
        title: T
        offline: no
        env: {FLAG: yes, OTHER: off}
        machines:
          - name: web
          - name: db
            synced_folder: yes
        steps:
          - name: s
            on: [db]
            run: "true"
        checks:
          - name: c
            type: port
            port: 22
            on: db
            open: no
        """)
    lab = loader.load_lab(folder).lab
    assert lab.steps[0].on == ["db"]
    assert lab.targets(lab.steps[0]) == ["db"]
    assert lab.checks[0].on == "db"
    assert lab.checks[0].open is False
    assert lab.offline is False
    assert lab.machines[1].synced_folder is True
    assert lab.env == {"FLAG": "yes", "OTHER": "off"}


def test_yaml_true_false_null_numbers_still_resolve(labs):
    folder = make_lab(labs, "ch5-scalars", """\
        chapter: 5
        title: T
        offline: false
        machines:
          - name: web
            synced_folder: true
            memory: 0x200
        checks:
          - name: c
            type: command
            run: "true"
            exit_code: 0
            matches: ~
        """)
    lab = loader.load_lab(folder).lab
    assert lab.offline is False and lab.machines[0].synced_folder is True
    assert lab.machines[0].memory == 512
    assert lab.checks[0].matches is None


# -- several errors of one file, together --------------------------------------------

def test_broken_fixture_reports_every_field_error_at_once(monkeypatch):
    monkeypatch.chdir(FIXTURE_LABS)
    shown = "broken/ch93-broken/lab.yaml"
    lines = errors_of(BROKEN / "ch93-broken")
    errs = field_errors(lines, shown)
    assert set(errs) == {"machines[1].memory", "machines[2].cpus", "checks[0]", "colour", "steps[0].files[0]"}
    assert "integer" in errs["machines[1].memory"]
    assert "greater than or equal to 1" in errs["machines[2].cpus"]
    assert errs["checks[0]"] == "type must be one of command, container, http, port"
    assert errs["colour"] == "unknown key"
    assert "'missing.sh' does not exist" in errs["steps[0].files[0]"]
    assert len(lines) == 5


def test_every_line_starts_with_the_file(monkeypatch):
    monkeypatch.chdir(FIXTURE_LABS)
    with pytest.raises(LabError) as info:
        loader.load_lab(BROKEN / "ch93-broken")
    assert info.value.lab == "ch93-broken"
    lines = str(info.value).splitlines()
    assert lines and all(line.startswith("broken/ch93-broken/lab.yaml: ") for line in lines)


def test_unknown_keys_and_wrong_types_everywhere(labs):
    folder = make_lab(labs, "ch5-types", """\
        chapter: six
        title: [not, a, string]
        machines:
          - name: web
            colour: red
            forwarded_ports:
              - {guest: 80, host: 70000, extra: 1}
          - name: db
            memory: 100
          - name: Bad_Name
        steps:
          - name: s
            run: 5
            timeout: forever
        checks:
          - name: c
            type: command
            run: x
            matches: "("
            bogus: 1
          - name: d
            type: http
            url: ftp://example.org/
          - name: e
            type: container
            container: x
            running: maybe
          - name: f
            run: x
        """)
    errs = field_errors(errors_of(folder), "ch5-types/lab.yaml")
    expected = {
        "chapter": "integer",
        "title": "valid string",
        "machines[0].colour": "unknown key",
        "machines[0].forwarded_ports[0].host": "less than or equal to 65535",
        "machines[0].forwarded_ports[0].extra": "unknown key",
        "machines[1].memory": "greater than or equal to 256",
        "machines[2].name": "should match pattern",
        "steps[0].run": "valid string",
        "steps[0].timeout": "integer",
        "checks[0].matches": "not a valid regular expression",
        "checks[0].bogus": "unknown key",
        "checks[1].url": "should match pattern",
        "checks[2].running": "valid boolean",
        "checks[3]": "missing `type`",
    }
    for field, fragment in expected.items():
        assert field in errs, f"{field} not reported: {errs}"
        assert fragment in errs[field], (field, errs[field])
    # pydantic's union member names (command/http/…) never leak into check paths
    assert not any(f.startswith("checks[") and ".command" in f for f in errs)


def test_cross_reference_errors_come_together(labs):
    folder = make_lab(labs, "ch5-refs", """\
        chapter: 5
        title: T
        secrets: [TOKEN]
        env: {TOKEN: x}
        machines:
          - name: web
          - name: db
          - name: web
        steps:
          - name: s
            on: [db, ghost]
            run: "true"
        checks:
          - name: c
            type: port
            port: 22
            on: nope
        """)
    errs = field_errors(errors_of(folder), "ch5-refs/lab.yaml")
    assert "duplicate machine name 'web'" in errs["machines[2].name"]
    assert errs["steps[0].on[1]"] == "unknown machine 'ghost' (machines: web, db, web)"
    assert errs["checks[0].on"].startswith("unknown machine 'nope'")
    assert "TOKEN" in errs["secrets"]
    assert "steps[0].on[0]" not in errs  # db exists


def test_name_must_equal_folder_name(labs):
    folder = make_lab(labs, "ch5-other", HEAD + "machines: [{name: web}]\n", folder="ch5-folder")
    assert errors_of(folder) == ["ch5-folder/lab.yaml: name: 'ch5-other' must equal the folder name 'ch5-folder'"]


def test_name_mismatch_and_file_errors_together(labs):
    folder = make_lab(labs, "ch5-other", """\
        chapter: 5
        title: T
        machines: [{name: web}]
        steps:
          - {name: s, run: x, files: [nothere.txt]}
        """, folder="ch5-folder")
    errs = field_errors(errors_of(folder), "ch5-folder/lab.yaml")
    assert set(errs) == {"name", "steps[0].files[0]"}


def test_field_and_cross_reference_errors_together(labs):
    folder = make_lab(labs, "ch5-mixed", """\
        chapter: 5
        title: T
        machines:
          - {name: web, memory: lots}
        steps:
          - {name: s, run: x, on: [ghost]}
        """)
    errs = field_errors(errors_of(folder), "ch5-mixed/lab.yaml")
    assert {"machines[0].memory", "steps[0].on[0]"} <= set(errs)


# -- files named by steps ---------------------------------------------------------

def test_step_files_must_exist_inside_the_lab_folder(labs, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    (labs / "x").write_text("beside the lab folder")
    folder = make_lab(labs, "ch5-files", """\
        chapter: 5
        title: T
        machines: [{name: web}]
        steps:
          - name: ok
            run: x
            files: [ok.sh, sub, sub/inner.txt, inlink]
          - name: bad
            run: x
            files: [nothere.sh, ../x, sub/../../x, outlink, outdir]
        """, files={"ok.sh": "x", "sub/inner.txt": "y"})
    os.symlink(tmp_path / "outside.txt", folder / "outlink")
    os.symlink("/etc", folder / "outdir")
    os.symlink("ok.sh", folder / "inlink")  # a link that stays inside is fine
    errs = field_errors(errors_of(folder), "ch5-files/lab.yaml")
    assert not any(k.startswith("steps[0]") for k in errs), errs
    assert "'nothere.sh' does not exist" in errs["steps[1].files[0]"]
    for j, rel in ((1, "../x"), (2, "sub/../../x"), (3, "outlink"), (4, "outdir")):
        assert errs[f"steps[1].files[{j}]"] == f"{rel!r} lies outside the lab folder"
    # the schema refuses `..` in any form (reported for the list as a whole)
    assert "must be a relative path inside the lab folder" in errs["steps[1].files"]


@pytest.mark.parametrize("rel", ["/etc/passwd", "a\\b", ""])
def test_schema_refuses_absolute_backslash_and_empty_paths(labs, rel):
    step = f"{{name: s, run: x, files: [{rel!r}]}}"
    folder = make_lab(labs, "ch5-abs", HEAD + f"machines: [{{name: web}}]\nsteps:\n  - {step}\n")
    errs = field_errors(errors_of(folder), "ch5-abs/lab.yaml")
    assert "must be a relative path inside the lab folder" in errs["steps[0].files"]


# -- files that are not lab files ---------------------------------------------------

def test_missing_lab_file(labs):
    (labs / "ch5-empty").mkdir()
    assert errors_of(labs / "ch5-empty") == ["ch5-empty/lab.yaml: no such file"]


def test_duplicate_yaml_keys_are_refused_with_line_and_column(labs):
    folder = make_lab(labs, "ch5-dup", """\
        chapter: 5
        title: T
        machines:
          - name: web
            memory: 512
            memory: 1024
        """)
    assert errors_of(folder) == ["ch5-dup/lab.yaml:7:5: invalid YAML: duplicate key 'memory'"]


def test_duplicate_top_level_key(labs):
    folder = make_lab(labs, "ch5-dup2", HEAD + "title: again\nmachines: [{name: web}]\n")
    assert errors_of(folder) == ["ch5-dup2/lab.yaml:4:1: invalid YAML: duplicate key 'title'"]


def test_invalid_yaml_shows_line_and_column(labs):
    folder = make_lab(labs, "ch5-syntax", HEAD + "machines:\n  - name: web\n   bad: [\n")
    (line,) = errors_of(folder)
    assert line.startswith("ch5-syntax/lab.yaml:6:4: invalid YAML: ")


def test_tab_indentation_is_invalid_yaml(labs):
    folder = make_lab(labs, "ch5-tab", HEAD + "machines:\n  - name: web\n\tmemory: 512\n")
    (line,) = errors_of(folder)
    assert line.startswith("ch5-tab/lab.yaml:6:1: invalid YAML: ")
    assert "'\\t'" in line


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_top_level_must_be_a_mapping(labs, text):
    d = labs / "ch5-list"
    d.mkdir()
    (d / "lab.yaml").write_text(text)
    assert errors_of(d) == ["ch5-list/lab.yaml: (top level): must be a mapping of lab fields"]


def test_not_utf8(labs):
    d = labs / "ch5-latin1"
    d.mkdir()
    (d / "lab.yaml").write_bytes("name: ch5-latin1\ntitle: caf\xe9\n".encode("latin-1"))
    assert errors_of(d) == ["ch5-latin1/lab.yaml:2:11: not UTF-8 text (byte 0xe9)"]


def test_missing_required_fields(labs):
    folder = make_lab(labs, "ch5-bare", "")
    errs = field_errors(errors_of(folder), "ch5-bare/lab.yaml")
    assert {"title", "machines"} <= set(errs) and "chapter" not in errs  # a lab outside the book has none
    assert all(errs[k] == "Field required" for k in ("title", "machines"))


def test_path_outside_cwd_is_shown_whole(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    folder = make_lab(tmp_path / "elsewhere", "ch5-far", HEAD + "machines: [{name: web, cpus: 0}]\n")
    shown = str(folder / "lab.yaml")
    errs = field_errors(errors_of(folder), shown)
    assert set(errs) == {"machines[0].cpus"}


# -- discovery and the search path ----------------------------------------------------

def test_a_broken_lab_does_not_hide_the_others(monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", str(BROKEN))
    labs, problems = loader.discover()
    assert [loaded.name for loaded in labs] == ["ch94-fine"]
    assert [p.folder.name for p in problems] == ["ch93-broken"]
    assert "machines[1].memory" in str(problems[0].error)


def test_vmdock_labs_holds_several_folders_sorted_by_chapter(monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", os.pathsep.join([str(AMBIGUOUS), "", str(GOOD)]))
    labs, problems = loader.discover()
    assert [loaded.name for loaded in labs] == ["ch91-alpha", "ch92-beta", "ch95-one", "ch95-two"]
    assert problems == []


def test_labs_dir_comes_before_vmdock_labs(tmp_path, monkeypatch):
    first = tmp_path / "first"
    make_lab(first, "ch92-beta", "chapter: 92\ntitle: the override\nmachines: [{name: solo}]\n")
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    labs, _ = loader.discover([first])
    beta = {loaded.name: loaded for loaded in labs}["ch92-beta"]
    assert beta.lab.title == "the override"
    assert beta.folder == (first / "ch92-beta").resolve()
    assert loader.resolve("ch92-beta", [first]).lab.title == "the override"
    assert loader.resolve("92", [first]).lab.title == "the override"


def test_search_path_dedups_and_ends_with_shipped_labs(tmp_path, monkeypatch, no_shipped_labs):
    monkeypatch.setenv("VMDOCK_LABS", f"{GOOD}{os.pathsep}{GOOD}/.")
    dirs = loader.search_path([GOOD])
    assert dirs == [GOOD.resolve(), no_shipped_labs.resolve()]


def test_missing_labs_folder_is_skipped(tmp_path):
    labs, _problems = loader.discover([tmp_path / "does-not-exist", GOOD])
    assert [loaded.name for loaded in labs] == ["ch91-alpha", "ch92-beta"]


# -- resolution --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ch91-alpha", "ch91", "91", "CH91", "Ch91", "091"])
def test_resolve_by_name_chapter_or_number(name):
    assert loader.resolve(name, [GOOD]).name == "ch91-alpha"


@pytest.mark.parametrize("name", ["ch95", "95"])
def test_resolve_ambiguous_chapter(name):
    with pytest.raises(LabError) as info:
        loader.resolve(name, [AMBIGUOUS])
    assert str(info.value) == f"{name!r} matches several labs: ch95-one, ch95-two; give the full name"
    assert loader.resolve("ch95-two", [AMBIGUOUS]).name == "ch95-two"


@pytest.mark.parametrize("name", ["nope", "ch7", "7", "ch91-alph"])
def test_resolve_unknown_lists_the_labs(name):
    with pytest.raises(LabError) as info:
        loader.resolve(name, [GOOD, AMBIGUOUS])
    exc = info.value
    assert str(exc) == f"unknown lab {name!r} (labs: ch91-alpha, ch92-beta, ch95-one, ch95-two)"
    assert "VMDOCK_LABS" in exc.hint and exc.exit_status == 2


def test_resolve_with_no_labs_at_all(tmp_path):
    with pytest.raises(LabError, match=r"unknown lab 'x' \(labs: none\)"):
        loader.resolve("x", [tmp_path])


def test_resolve_broken_lab_by_chapter_shows_its_errors_not_unknown():
    for name in ("ch93", "93", "ch93-broken"):
        with pytest.raises(LabError) as info:
            loader.resolve(name, [BROKEN])
        assert "machines[1].memory" in info.value.message, name
        assert "unknown lab" not in info.value.message


def test_resolve_by_full_name_ignores_broken_labs_elsewhere():
    assert loader.resolve("ch94-fine", [BROKEN]).name == "ch94-fine"
    assert loader.resolve("ch94", [BROKEN]).name == "ch94-fine"


def test_resolve_uses_vmdock_labs(monkeypatch):
    monkeypatch.setenv("VMDOCK_LABS", str(GOOD))
    assert loader.resolve("92").name == "ch92-beta"


# -- the schema itself -----------------------------------------------------------

def test_model_is_frozen_and_strict():
    lab = Lab.model_validate({"name": "ch5-x", "chapter": 5, "title": "T", "machines": [{"name": "web"}]})
    with pytest.raises(ValidationError):
        lab.name = "other"  # type: ignore[misc]
    m = lab.machines[0]
    assert (m.box, m.cpus, m.memory, m.hostname, m.synced_folder) == ("debian12", 1, 1024, None, False)
    assert lab.offline is True and lab.base_image == "debian:bookworm"


@pytest.mark.parametrize("name,ok", [
    ("ab", True), ("a-b-9", True), ("a" * 32, True),
    ("a", False), ("a" * 33, False), ("-ab", False), ("ab-", False), ("Ab", False), ("a_b", False), ("9ab", False),
])
def test_names(name, ok):
    data = {"name": "ch5-x", "chapter": 5, "title": "T", "machines": [{"name": name}]}
    if ok:
        Lab.model_validate(data)
    else:
        with pytest.raises(ValidationError):
            Lab.model_validate(data)


def test_yaml_dump_round_trip_of_a_fixture():
    """A lab dumped back to YAML loads to the same model (no lossy defaults)."""
    loaded = loader.load_lab(GOOD / "ch91-alpha")
    again = Lab.model_validate(yaml.safe_load(yaml.safe_dump(loaded.lab.model_dump(mode="json"), allow_unicode=True)))
    assert again == loaded.lab


# -- limits and the rules that protect render and up ---------------------------------

def ports_lab(*machines: list[dict]) -> dict:
    return {"name": "ch5-x", "chapter": 5, "title": "T",
            "machines": [{"name": f"m{i}x", "forwarded_ports": fwd} for i, fwd in enumerate(machines)]}


def test_max_machines_is_what_the_lab_network_holds():
    from vmdock import seats

    net = seats.pool_blocks()[5]
    assert net.prefixlen == model.LAB_PREFIX
    assert model.MAX_MACHINES == len(list(net.hosts())) - 1 == 13  # one host address is the gateway
    Lab.model_validate(ports_lab(*[[]] * 13))
    with pytest.raises(ValidationError, match="at most 13 items"):
        Lab.model_validate(ports_lab(*[[]] * 14))


@pytest.mark.parametrize("forwards", [
    [[{"guest": 80, "host": 8080}], [{"guest": 80, "host": 8080, "protocol": "udp"}]],  # other protocol
    [[{"guest": 80, "host": 8080, "host_ip": "127.0.0.1"}], [{"guest": 80, "host": 8080, "host_ip": "127.0.0.2"}]],
    [[{"guest": 80, "host": 8080}, {"guest": 80, "host": 8081, "protocol": "udp"}]],
    [[{"guest": 80, "host": 8080}], [{"guest": 80, "host": 8081, "host_ip": "0.0.0.0"}]],
])
def test_forwards_that_do_not_clash(forwards):
    assert model.cross_ref_errors(ports_lab(*forwards)) == []
    Lab.model_validate(ports_lab(*forwards))


FIRST = "machines[0].forwarded_ports[0] (m0x)"


@pytest.mark.parametrize("forwards,error", [
    ([[{"guest": 80, "host": 8080}], [{"guest": 81, "host": 8080}]],
     f"machines[1].forwarded_ports[0].host: host port 8080/tcp is already forwarded by {FIRST}"),
    ([[{"guest": 80, "host": 8080, "host_ip": "0.0.0.0"}], [{"guest": 81, "host": 8080, "host_ip": "::1"}]],
     f"machines[1].forwarded_ports[0].host: host port 8080/tcp is already forwarded by {FIRST}"),
    ([[{"guest": 80, "host": 8080, "host_ip": "::1"}, {"guest": 81, "host": 8080, "host_ip": "0:0::1"}]],
     f"machines[0].forwarded_ports[1].host: host port 8080/tcp is already forwarded by {FIRST}"),
    ([[{"guest": 80, "host": 8080}, {"guest": 80, "host": 8081}]],
     f"machines[0].forwarded_ports[1].guest: guest port 80/tcp is already forwarded by {FIRST}"),
])
def test_forwards_that_clash(forwards, error):
    assert model.cross_ref_errors(ports_lab(*forwards)) == [error]
    with pytest.raises(ValidationError, match=re.escape(error)):
        Lab.model_validate(ports_lab(*forwards))


def test_port_clashes_are_found_in_raw_data_beside_other_errors(labs):
    folder = make_lab(labs, "ch5-raw", """\
        chapter: 5
        title: T
        machines:
          - {name: web, memory: lots, forwarded_ports: [{guest: 80, host: 8080}]}
          - {name: db, forwarded_ports: [{guest: 80, host: 8080, host_ip: "0.0.0.0"}, {guest: x, host: true}]}
        """)
    assert errors_of(folder) == [
        "ch5-raw/lab.yaml: machines[0].memory: Input should be a valid integer, unable to parse string as an integer",
        "ch5-raw/lab.yaml: machines[1].forwarded_ports[1].guest: Input should be a valid integer",
        "ch5-raw/lab.yaml: machines[1].forwarded_ports[1].host: Input should be a valid integer",
        "ch5-raw/lab.yaml: machines[1].forwarded_ports[0].host: "
        "host port 8080/tcp is already forwarded by machines[0].forwarded_ports[0] (web)",
    ]


def test_host_ip_is_kept_in_its_standard_form():
    lab = Lab.model_validate(ports_lab([{"guest": 80, "host": 8080, "host_ip": "0:0::1"}]))
    assert lab.machines[0].forwarded_ports[0].host_ip == "::1"


def test_boxes_come_from_the_box_list(tmp_path, monkeypatch):
    from vmdock import paths

    (tmp_path / "boxes.yaml").write_text("mybox: {title: Mine}\n")
    monkeypatch.setattr(paths, "BOXES_DIR", tmp_path)
    Lab.model_validate({"name": "ch5-x", "chapter": 5, "title": "T", "machines": [{"name": "web", "box": "mybox"}]})
    with pytest.raises(ValidationError, match=r"unknown box 'debian12' \(boxes: mybox\)"):
        Lab.model_validate({"name": "ch5-x", "chapter": 5, "title": "T",
                            "machines": [{"name": "web", "box": "debian12"}]})


@pytest.mark.parametrize("text", ["tab\there", "a\nmultiline\nscript\r\n", "中文 ✓ 🐳"])
def test_text_may_hold_tabs_and_line_breaks(text):
    data = {"name": "ch5-x", "chapter": 5, "title": "T", "description": text, "machines": [{"name": "web"}],
            "steps": [{"name": "s", "run": text}]}
    assert Lab.model_validate(data).steps[0].run == text


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x9b", "\u2028", "\u202e", "\u2067"])
def test_text_refuses_control_characters(char):
    data = {"name": "ch5-x", "chapter": 5, "title": "T", "machines": [{"name": "web"}],
            "steps": [{"name": "s", "run": f"echo {char}"}]}
    with pytest.raises(ValidationError, match=re.escape(f"text must not contain {char!r} (character 6)")):
        Lab.model_validate(data)


def test_error_lines_are_cut(labs):
    folder = make_lab(labs, "ch5-many", HEAD + "machines: [{name: web}]\n" + "".join(f"k{i}: 1\n" for i in range(60)))
    lines = errors_of(folder)
    assert len(lines) == loader.MAX_ERRORS + 1
    assert lines[-1] == "ch5-many/lab.yaml: and 10 more errors"


def test_unknown_keys_are_quoted_when_not_plain(labs):
    folder = make_lab(labs, "ch5-keys", HEAD + "machines: [{name: web}]\n'a b': 1\n'a[0]': 2\n" + "k" * 100 + ": 3\n")
    assert errors_of(folder) == [
        "ch5-keys/lab.yaml: 'a b': unknown key",
        "ch5-keys/lab.yaml: 'a[0]': unknown key",
        f"ch5-keys/lab.yaml: {'k' * 60 + '…'!r}: unknown key",
    ]


def test_limits_sit_far_above_the_shipped_labs():
    from vmdock import paths

    files = sorted((paths.SHARE / "labs").glob("*/lab.yaml")) + sorted(FIXTURE_LABS.glob("*/*/lab.yaml"))
    assert len(files) > 20  # the shipped labs (paths.LABS_DIR is hidden here) and the fixtures
    for file in files:
        assert file.stat().st_size < loader.MAX_FILE_BYTES // 10, file
        nodes = list(_walk(yaml.compose(file.read_text(encoding="utf-8"))))
        assert len(nodes) < labyaml.MAX_NODES // 10 and max(depth for depth, _ in nodes) < labyaml.MAX_DEPTH // 4, file


def _walk(node, depth=1):
    yield depth, node
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    for child in children:
        yield from _walk(child, depth + 1)


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="libyaml is not installed: only the Python parser runs")
def test_libyaml_and_the_python_parser_read_labs_alike():
    from vmdock import paths

    for file in sorted((paths.SHARE / "labs").glob("*/lab.yaml")) + sorted(FIXTURE_LABS.glob("*/*/lab.yaml")):
        text = file.read_text(encoding="utf-8")
        fast = yaml.load(text, Loader=labyaml._FastLabLoader)
        assert fast == yaml.load(text, Loader=labyaml._LabLoader), file
