"""The lab index `vmdock list` reads: a lab is validated again whenever anything it was validated from changed,
a broken lab is never taken from it, and a damaged or foreign index file is ignored."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmdock import cli, labindex, loader

GOOD = Path(__file__).resolve().parent / "labs" / "good"


@pytest.fixture
def labs(tmp_path, vmdock_home, no_shipped_labs, monkeypatch) -> Path:
    """A copy of the good fixture labs; every lab.yaml counts as settled (kept in the index at once)."""
    monkeypatch.setattr(labindex, "SETTLE_SECONDS", -1.0)
    copy = tmp_path / "labs"
    shutil.copytree(GOOD, copy)
    return copy


def names(labs_dir: Path) -> tuple[list[str], list[str]]:
    found, problems = labindex.summaries([labs_dir])
    return [s.name for s in found], [str(p.error) for p in problems]


def loads(monkeypatch) -> list[Path]:
    """The folders loaded (validated) from now on."""
    seen: list[Path] = []
    real = loader.load_lab

    def counting(folder):
        seen.append(Path(folder))
        return real(folder)

    monkeypatch.setattr(loader, "load_lab", counting)
    return seen


def rewrite(file: Path, old: str, new: str) -> None:
    time.sleep(0.05)  # past the file system's timestamp tick
    file.write_text(file.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


def test_an_unchanged_lab_is_not_validated_again(labs, monkeypatch):
    assert names(labs) == (["ch91-alpha", "ch92-beta"], [])
    assert labindex.index_file().is_file()
    seen = loads(monkeypatch)
    found, _ = labindex.summaries([labs])
    assert seen == []
    alpha = found[0]
    assert (alpha.chapter, alpha.title, alpha.title_en, alpha.machines, alpha.offline, alpha.folder) == (
        91, "测试实验 Alpha", "Test lab alpha", ("web", "db"), True, (labs / "ch91-alpha").resolve())


def test_an_edit_of_the_same_size_and_mtime_is_seen(labs, monkeypatch):
    file = labs / "ch91-alpha" / "lab.yaml"
    names(labs)
    before = file.stat()
    rewrite(file, "Test lab alpha", "Test lab ALPHA")
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))  # the size and mtime of before
    seen = loads(monkeypatch)
    found, _ = labindex.summaries([labs])
    assert found[0].title_en == "Test lab ALPHA" and seen == [labs / "ch91-alpha"]


def test_a_lab_that_turns_invalid_is_reported_and_forgotten(labs):
    names(labs)
    rewrite(labs / "ch92-beta" / "lab.yaml", "chapter: 92", "chapter: nine")
    found, problems = names(labs)
    assert found == ["ch91-alpha"] and len(problems) == 1 and "chapter" in problems[0]
    index = json.loads(labindex.index_file().read_text(encoding="utf-8"))
    assert str(labs / "ch92-beta") not in index["labs"]


def test_a_step_file_that_is_gone_makes_the_lab_broken(labs):
    names(labs)
    (labs / "ch91-alpha" / "setup.sh").unlink()
    found, problems = names(labs)
    assert found == ["ch92-beta"]
    assert "steps[0].files[0]: 'setup.sh' does not exist" in problems[0]


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    json.dumps({"version": 99, "labs": {}}),
    json.dumps({"version": labindex.INDEX_VERSION, "judges": [], "labs": {"x": 1}}),
])
def test_a_damaged_or_foreign_index_is_ignored_and_written_anew(labs, content):
    labindex.index_file().parent.mkdir(parents=True, exist_ok=True)
    labindex.index_file().write_text(content, encoding="utf-8")
    assert names(labs) == (["ch91-alpha", "ch92-beta"], [])
    assert json.loads(labindex.index_file().read_text(encoding="utf-8"))["version"] == labindex.INDEX_VERSION


def test_an_entry_of_the_wrong_shape_is_not_trusted(labs, monkeypatch):
    names(labs)
    file = labindex.index_file()
    index = json.loads(file.read_text(encoding="utf-8"))
    index["labs"][str(labs / "ch91-alpha")]["summary"]["machines"] = "web"  # a string, not a list
    file.write_text(json.dumps(index), encoding="utf-8")
    seen = loads(monkeypatch)
    found, _ = labindex.summaries([labs])
    assert found[0].machines == ("web", "db") and seen == [labs / "ch91-alpha"]


def test_a_lab_just_written_is_validated_until_it_settles(labs, monkeypatch):
    monkeypatch.setattr(labindex, "SETTLE_SECONDS", 3600.0)
    names(labs)
    seen = loads(monkeypatch)
    names(labs)
    assert seen == [labs / "ch91-alpha", labs / "ch92-beta"]


def test_list_is_the_same_from_the_index_and_without_a_home_to_write(labs, capsys, monkeypatch, tmp_path):
    outputs = []
    for _ in range(2):  # validated, then from the index
        assert cli.main(["--labs-dir", str(labs), "list", "--json"]) == 0
        outputs.append(capsys.readouterr().out)
    (tmp_path / "a-file").write_text("", encoding="utf-8")
    monkeypatch.setenv("VMDOCK_HOME", str(tmp_path / "a-file" / "home"))  # cannot be made
    assert cli.main(["--labs-dir", str(labs), "list", "--json"]) == 0
    outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert [lab["name"] for lab in json.loads(outputs[0])["labs"]] == ["ch91-alpha", "ch92-beta"]


def test_list_from_the_index_imports_no_loader_engine_or_provider(labs, tmp_path):
    env = {**os.environ, "VMDOCK_HOME": str(tmp_path / "home"), "VMDOCK_PROVIDER": "docker"}
    env.pop("VMDOCK_LABS", None)
    index = f"from vmdock import labindex; labindex.SETTLE_SECONDS = -1; labindex.summaries([{str(labs)!r}])"
    listed = (
        "import sys\n"
        "from vmdock import cli\n"
        f"assert cli.main(['--labs-dir', {str(labs)!r}, 'list', '--json']) == 0\n"
        "sys.stderr.write(' '.join(sorted(sys.modules)))\n"
    )
    for code in (index, listed):
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    # nothing that validates, renders, provisions or locks was imported
    modules = set(proc.stderr.split())
    heavy = {"vmdock.loader", "vmdock.model", "vmdock.engine", "vmdock.providers.docker", "yaml", "jinja2",
             "fabric", "paramiko", "filelock", "pydantic_settings", "asyncio"}
    assert "vmdock.labindex" in modules and not modules & heavy
