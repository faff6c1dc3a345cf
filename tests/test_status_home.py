"""`vmdock status` lists every lab of the home, and `destroy` of a lab that was never up writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

from vmdock import cli
from vmdock.state import LabState

GOOD = Path(__file__).resolve().parent / "labs" / "good"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_finds_a_lab_through_its_state_without_its_labs_folder(capsys, vmdock_home):
    state = LabState(path=vmdock_home / "labs" / "ch91-alpha" / "state.json", lab="ch91-alpha",
                     provider="docker", lab_folder=str(GOOD / "ch91-alpha"))
    state.save()
    code, out, err = run(capsys, "status", "--json")  # no --labs-dir: the shipped labs do not have ch91-alpha
    assert code == 0, err
    assert [row["lab"] for row in json.loads(out)] == ["ch91-alpha"]


def test_a_state_whose_lab_folder_is_gone_is_left_out_not_a_crash(capsys, vmdock_home, tmp_path):
    LabState(path=vmdock_home / "labs" / "gone" / "state.json", lab="gone", provider="docker",
             lab_folder=str(tmp_path / "no-such-folder")).save()
    code, out, err = run(capsys, "status", "--json")
    assert code == 0 and json.loads(out) == [] and "Traceback" not in err


def test_destroy_of_a_lab_never_up_writes_nothing(capsys, vmdock_home):
    code, out, _ = run(capsys, "--labs-dir", str(GOOD), "destroy", "ch91-alpha")
    assert code == 0 and "nothing was up" in out
    assert not vmdock_home.exists()
