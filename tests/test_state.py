"""Per-lab state: chained fingerprints, atomic 0600 saves, secrets, the lab lock."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmdock import machine_setup, provision, render
from vmdock.errors import BusyError, StateError
from vmdock.labcontext import Context
from vmdock.lifecycle import Phase, actions
from vmdock.loader import load_lab
from vmdock.provision import build_plan
from vmdock.runlog import Log
from vmdock.settings import Settings
from vmdock.state import LabState, fingerprint, hash_paths, lab_lock

from .seating import SEAT_SUBNET

GOOD = Path(__file__).resolve().parent / "labs" / "good"


def chain(parts: list[str]) -> list[str]:
    fps, fp = [], ""
    for p in parts:
        fp = fingerprint(fp, p)
        fps.append(fp)
    return fps


# -- fingerprints --------------------------------------------------------------------

def test_fingerprints_chain_forward_only():
    steps = ["echo one", "echo two", "echo three", "echo four"]
    before = chain(steps)
    after = chain(["echo one", "echo TWO", "echo three", "echo four"])
    assert before[0] == after[0]
    assert all(b != a for b, a in zip(before[1:], after[1:], strict=True))
    assert len(set(before)) == len(before)
    assert chain(steps) == before  # deterministic


def test_fingerprint_parts_are_length_prefixed():
    assert fingerprint("", "ab", "c") != fingerprint("", "a", "bc")
    assert fingerprint("", "a", "") != fingerprint("", "a")
    assert fingerprint("x", "a") != fingerprint("y", "a")
    assert fingerprint("", "中") == fingerprint("", "中".encode())


def test_hash_paths_follows_content_names_and_exec_bits(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f.txt").write_text("one")
    (tmp_path / "s.sh").write_text("echo")
    h = hash_paths(tmp_path, ["d", "s.sh"])
    assert hash_paths(tmp_path, ["s.sh", "d"]) == h  # order of names does not matter
    (tmp_path / "d" / "sub" / "f.txt").write_text("two")
    h2 = hash_paths(tmp_path, ["d", "s.sh"])
    assert h2 != h
    os.chmod(tmp_path / "s.sh", 0o755)
    h3 = hash_paths(tmp_path, ["d", "s.sh"])
    assert h3 != h2
    (tmp_path / "d" / "sub" / "f.txt").rename(tmp_path / "d" / "sub" / "g.txt")
    assert hash_paths(tmp_path, ["d", "s.sh"]) != h3
    assert hash_paths(tmp_path, ["s.sh"]) == hash_paths(tmp_path, ["s.sh"])


# -- the state file ----------------------------------------------------------------

@pytest.fixture
def state_path(tmp_path) -> Path:
    return tmp_path / "labs" / "ch91-alpha" / "state.json"


def test_new_state_when_no_file(state_path):
    st = LabState.load(state_path, "ch91-alpha")
    assert st.phase == "new" and st.steps == {} and not state_path.exists()


def test_is_done_and_mark_done(state_path):
    st = LabState.load(state_path, "ch91-alpha")
    assert not st.is_done("step1:web", "fp1")
    st.last_error = {"message": "boom"}
    st.mark_done("step1:web", "fp1", 1.234)
    assert st.is_done("step1:web", "fp1")
    assert not st.is_done("step1:web", "fp-other")
    assert not st.is_done("step1:db", "fp1")
    assert st.last_error is None
    again = LabState.load(state_path, "ch91-alpha")  # mark_done saved
    assert again.is_done("step1:web", "fp1")
    assert again.steps["step1:web"]["seconds"] == 1.23


def test_last_good_step_follows_the_plan_order(state_path):
    st = LabState(path=state_path, lab="x")
    # step10 sorts before step9 as text: the plan's own order must survive a save
    st.plan = ["web:files", "step9:web", "step10:web"]
    assert st.last_good_step() is None
    st.steps = {"web:files": {}, "step10:web": {}}
    assert st.last_good_step() == "web:files"
    st.steps["step9:web"] = {}
    st.save()
    again = LabState.load(state_path, "x")
    assert again.plan == ["web:files", "step9:web", "step10:web"]
    assert again.last_good_step() == "step10:web"


def test_phase_moves_follow_the_table(state_path):
    st = LabState(path=state_path, lab="x")
    with pytest.raises(StateError, match="from new to provisioned"):
        st.move(Phase.PROVISIONED)
    for phase in (Phase.RENDERED, Phase.BOOTED, Phase.PROVISIONED, Phase.HALTED, Phase.BOOTED, Phase.DESTROYED):
        st.move(phase)
    assert st.phase is Phase.DESTROYED
    st.save()
    assert LabState.load(state_path, "x").phase is Phase.DESTROYED
    state_path.write_text(state_path.read_text().replace('"destroyed"', '"exploded"'))
    with pytest.raises(StateError, match="unknown phase 'exploded'"):
        LabState.load(state_path, "x")


@pytest.mark.parametrize(
    "last, desired, expected",
    [
        (Phase.NEW, Phase.PROVISIONED, ["render", "boot", "provision"]),
        (Phase.DESTROYED, Phase.PROVISIONED, ["render", "boot", "provision"]),
        (Phase.HALTED, Phase.PROVISIONED, ["boot", "provision"]),
        (Phase.FAILED, Phase.PROVISIONED, ["boot", "provision"]),
        (Phase.BOOTED, Phase.PROVISIONED, ["provision"]),
        (Phase.PROVISIONED, Phase.PROVISIONED, []),
        (Phase.PROVISIONED, Phase.RENDERED, []),
        (Phase.NEW, Phase.RENDERED, ["render"]),
    ],
)
def test_actions_from_last_to_desired(last, desired, expected):
    assert actions(last, desired) == expected


def test_save_round_trip_is_atomic_and_private(state_path):
    st = LabState(path=state_path, lab="ch91-alpha", provider="docker", lab_folder="/labs/ch91-alpha", phase="booted")
    st.machines = {"web": {"id": "abc", "ssh": {"host": "127.0.0.1", "port": 2222}}}
    st.exports = {"WEB_PORT": "80"}
    st.secrets = {"DB_PASSWORD": "s3cr3t 中文"}
    st.save()
    assert sorted(p.name for p in state_path.parent.iterdir()) == ["state.json"]  # no temp file left
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    data = json.loads(state_path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["lab"] == "ch91-alpha" and data["phase"] == "booted"
    again = LabState.load(state_path, "ch91-alpha")
    for attr in ("provider", "lab_folder", "machines", "steps", "secrets", "exports", "last_error", "phase"):
        assert getattr(again, attr) == getattr(st, attr), attr


def test_save_replaces_a_world_readable_file_with_a_private_one(state_path):
    state_path.parent.mkdir(parents=True)
    state_path.write_text("{}")
    os.chmod(state_path, 0o644)
    old_umask = os.umask(0)
    try:
        LabState(path=state_path, lab="x").save()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600


def test_a_failed_save_leaves_the_old_file_whole(state_path, monkeypatch):
    st = LabState(path=state_path, lab="x", phase="provisioned")
    st.save()
    good = state_path.read_text()

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("vmdock.state.json.dump", explode)
    st.phase = "failed"
    with pytest.raises(OSError):
        st.save()
    assert state_path.read_text() == good
    assert LabState.load(state_path, "x").phase == "provisioned"


def test_unreadable_or_foreign_state_file(state_path):
    state_path.parent.mkdir(parents=True)
    state_path.write_text("{not json")
    with pytest.raises(StateError) as info:
        LabState.load(state_path, "ch91-alpha")
    assert str(state_path) in info.value.message and "vmdock destroy ch91-alpha" in info.value.hint
    state_path.write_text(json.dumps({"version": 99}))
    with pytest.raises(StateError, match="unknown version"):
        LabState.load(state_path, "ch91-alpha")


def test_secrets_are_generated_once_and_kept(state_path, monkeypatch):
    st = LabState.load(state_path, "ch91-alpha")
    first = st.ensure_secrets(["DB_PASSWORD", "API_TOKEN"])
    assert set(first) == {"DB_PASSWORD", "API_TOKEN"}
    assert first["DB_PASSWORD"] != first["API_TOKEN"]
    assert all(len(v) >= 20 and v.isprintable() and " " not in v for v in first.values())
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    assert st.ensure_secrets(["DB_PASSWORD", "API_TOKEN"]) == first
    # nothing new: no write
    saves = []
    monkeypatch.setattr(LabState, "save", lambda self: saves.append(1))
    st.ensure_secrets(["API_TOKEN"])
    assert saves == []
    monkeypatch.undo()
    # a new process sees the same values; a new name leaves the others alone
    again = LabState.load(state_path, "ch91-alpha")
    more = again.ensure_secrets(["DB_PASSWORD", "NEW_ONE"])
    assert more["DB_PASSWORD"] == first["DB_PASSWORD"]
    assert LabState.load(state_path, "ch91-alpha").secrets == {**first, "NEW_ONE": more["NEW_ONE"]}


def test_reset_forgets_everything_but_the_name(state_path):
    st = LabState(path=state_path, lab="x", provider="docker", machines={"a": {}}, steps={"s": {}},
                  secrets={"A": "b"}, exports={"E": "1"}, last_error={"message": "m"})
    st.reset()
    assert (st.machines, st.steps, st.secrets, st.exports, st.last_error, st.provider) == ({}, {}, {}, {}, None, None)
    assert st.phase == "destroyed" and st.lab == "x"


# -- the lab lock ----------------------------------------------------------------------

def test_lab_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    folder = tmp_path / "ch91-alpha"
    with lab_lock(folder, "ch91-alpha", "up"):
        holder = (folder / "lock.holder").read_text()
        assert holder.startswith(f"`vmdock up` (pid {os.getpid()}) since ")
        with pytest.raises(BusyError) as info:
            with lab_lock(folder, "ch91-alpha", "destroy"):
                pytest.fail("got the lock twice")
        exc = info.value
        assert exc.exit_status == 3 and exc.lab == "ch91-alpha"
        assert exc.message == f"lab is busy: {holder}"
        assert str(exc).startswith("ch91-alpha: lab is busy: `vmdock up` (pid ")
        assert exc.hint
        assert (folder / "lock.holder").read_text() == holder  # the refused one wrote nothing
    with lab_lock(folder, "ch91-alpha", "destroy"):
        assert (folder / "lock.holder").read_text().startswith("`vmdock destroy` (pid ")


def test_lab_lock_is_released_when_the_body_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with lab_lock(tmp_path, "x", "up"):
            raise RuntimeError("boom")
    with lab_lock(tmp_path, "x", "up"):
        pass


HOLDER = textwrap.dedent("""
    import sys
    from vmdock.state import lab_lock
    with lab_lock(sys.argv[1], "ch91-alpha", "verify"):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_lab_lock_refuses_while_another_process_holds_it(tmp_path):
    folder = tmp_path / "ch91-alpha"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(BusyError) as info:
            with lab_lock(folder, "ch91-alpha", "up"):
                pytest.fail("got a lock another process holds")
        assert f"`vmdock verify` (pid {proc.pid})" in info.value.message
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0
    with lab_lock(folder, "ch91-alpha", "up"):
        assert f"(pid {os.getpid()})" in (folder / "lock.holder").read_text()


# -- provision.build_plan fingerprints ----------------------------------------------------

@pytest.fixture
def plan_ctx(tmp_path, monkeypatch):
    """A Context over a copy of ch91-alpha, with the shell scripts faked."""
    monkeypatch.setattr(machine_setup, "provisioner", lambda name: f"# fake {name}\n")
    monkeypatch.setattr(
        machine_setup, "render_template", lambda name, **values: json.dumps({"t": name, **values}, default=str)
    )
    folder = tmp_path / "labs" / "ch91-alpha"
    shutil.copytree(GOOD / "ch91-alpha", folder)

    def make(settings: Settings | None = None) -> Context:
        loaded = load_lab(folder)
        st = LabState(path=tmp_path / "home" / "state.json", lab=loaded.name, provider="docker")
        return Context(
            loaded=loaded,
            state=st,
            settings=settings or Settings(),
            log=Log(tmp_path / "home" / "vmdock.log"),
            ips=render.machine_ips(loaded, SEAT_SUBNET),
            base_tarball=None,
            base_cache=tmp_path / "cache" / "rootfs.tar",
        )

    make.folder = folder
    return make


def fps(ctx, ids=None) -> dict[str, str]:
    return {i.key: i.fingerprint for i in build_plan(ctx, ids or {"web": "id-web", "db": "id-db"})}


def test_plan_order_and_keys(plan_ctx):
    items = build_plan(plan_ctx(), {"web": "id-web", "db": "id-db"})
    keys = [i.key for i in items]
    builtin = [f"{m}:{b}" for m in ("web", "db") for b in ("apt", "docker", "daemon", "base", "files")]
    assert keys == builtin + ["step1:web", "step1:db", "step2:web", "step3:db"]
    assert [i.builtin for i in items] == [True] * 10 + [False] * 4
    assert len({i.fingerprint for i in items}) == len(items)
    assert fps(plan_ctx()) == fps(plan_ctx())  # stable between runs


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if before[k] != after[k]}


STEPS = ["step1:web", "step1:db", "step2:web", "step3:db"]


def test_editing_a_steps_file_reruns_that_step_and_later_ones_only(plan_ctx):
    before = fps(plan_ctx())
    (plan_ctx.folder / "web" / "index.html").write_text("<h1>changed</h1>\n")  # files: [web] of step 2
    after = fps(plan_ctx())
    assert _changed(before, after) == {"web:files", "db:files", "step2:web", "step3:db"}


def test_editing_the_first_steps_file_reruns_every_step(plan_ctx):
    before = fps(plan_ctx())
    (plan_ctx.folder / "setup.sh").write_text("echo changed\n")  # files: [setup.sh] of step 1
    assert _changed(before, fps(plan_ctx())) == {"web:files", "db:files", *STEPS}


def test_a_lab_file_no_step_names_is_uploaded_again_but_reruns_no_step(plan_ctx):
    before = fps(plan_ctx())
    (plan_ctx.folder / "notes.txt").write_text("new\n")
    assert _changed(before, fps(plan_ctx())) == {"web:files", "db:files"}


def test_editing_a_steps_text_reruns_it_and_later_ones(plan_ctx):
    before = fps(plan_ctx())
    lab_yaml = plan_ctx.folder / "lab.yaml"
    lab_yaml.write_text(lab_yaml.read_text().replace("run: echo db", "run: echo database"))
    assert _changed(before, fps(plan_ctx())) == {"web:files", "db:files", "step3:db"}
    lab_yaml.write_text(lab_yaml.read_text().replace('name: "91.2 网页"', 'name: "91.2 网页 (new)"'))
    assert _changed(before, fps(plan_ctx())) == {"web:files", "db:files", "step2:web", "step3:db"}


def test_env_and_secrets_names_change_every_step(plan_ctx):
    before = fps(plan_ctx())
    lab_yaml = plan_ctx.folder / "lab.yaml"
    lab_yaml.write_text(lab_yaml.read_text().replace("GREETING: hello", "GREETING: bonjour"))
    assert set(STEPS) <= _changed(before, fps(plan_ctx()))


def test_machine_settings_and_ids_change_the_builtin_chain(plan_ctx):
    before = fps(plan_ctx())
    after = fps(plan_ctx(Settings(registry_mirrors=("http://mirror.local:5000",))))
    changed = _changed(before, after)
    # the daemon config and everything after it, on both machines, and every step
    assert {"web:daemon", "web:base", "web:files", "db:daemon", "db:base", "db:files", *STEPS} == changed
    # a machine made anew (new id) starts its chain from scratch
    changed = _changed(before, fps(plan_ctx(), {"web": "id-web-2", "db": "id-db"}))
    web_steps = {f"web:{b}" for b in ("apt", "docker", "daemon", "base", "files")}
    assert {k for k in changed if k.startswith("web:")} == web_steps
    assert not any(k.startswith("db:") for k in changed)
    assert set(STEPS) <= changed


def test_run_plan_skips_what_is_done_and_resumes_after_a_change(plan_ctx):
    """With a fake transport: the second run runs nothing, an edit runs only what changed."""
    ctx = plan_ctx()
    ran: list[str] = []

    class FakeTransport:
        def __init__(self, machine):
            self.machine = machine

    items = build_plan(ctx, {"web": "w", "db": "d"})
    for it in items:
        it.action = (lambda key: lambda t: ran.append(key))(it.key)
    transports = {"web": FakeTransport("web"), "db": FakeTransport("db")}
    from vmdock.events import Events

    assert provision.run_plan(ctx, items, transports, Events()) == len(items)
    assert sorted(ran) == sorted(i.key for i in items)
    ran.clear()
    assert provision.run_plan(ctx, items, transports, Events()) == 0 and ran == []
    (plan_ctx.folder / "web" / "index.html").write_text("<h1>changed</h1>\n")
    ctx2 = plan_ctx()
    ctx2.state = LabState.load(ctx.state.path, ctx.state.lab)
    items = build_plan(ctx2, {"web": "w", "db": "d"})
    for it in items:
        it.action = (lambda key: lambda t: ran.append(key))(it.key)
    assert provision.run_plan(ctx2, items, transports, Events()) == 4
    assert sorted(ran) == sorted(["web:files", "db:files", "step2:web", "step3:db"])
