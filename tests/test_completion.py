"""Shell completion of lab names, through the installed `vmdock` entry point as bash asks for it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmdock import paths

GOOD = Path(__file__).parent / "labs" / "good"


def complete(*words: str, env_extra: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the last of ``vmdock WORDS...``."""
    line = ["vmdock", *words]
    env = {k: v for k, v in os.environ.items() if k != "VMDOCK_LABS"}
    env.update(_VMDOCK_COMPLETE="complete_bash", COMP_WORDS=" ".join(line), COMP_CWORD=str(len(line) - 1))
    env.update(env_extra or {})
    code = "import sys; from vmdock.cli import main; sys.argv[0] = 'vmdock'; main()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_lab_argument_completes_shipped_lab_names():
    shipped = sorted(p.parent.name for p in paths.LABS_DIR.glob("*/lab.yaml"))
    assert shipped
    assert complete("up", "") == shipped
    assert complete("verify", "ch1") == [n for n in shipped if n.startswith("ch1")]
    assert complete("ssh", "no-such-lab") == []


@pytest.mark.parametrize("how", ["option", "env"])
def test_lab_argument_completes_labs_of_extra_folders(how):
    if how == "option":
        offered = complete("--labs-dir", str(GOOD), "destroy", "ch9")
    else:
        offered = complete("destroy", "ch9", env_extra={"VMDOCK_LABS": str(GOOD)})
    assert offered == ["ch9-wordpress", "ch91-alpha", "ch92-beta"]
