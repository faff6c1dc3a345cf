"""The command line: a thin typer layer over ``vmdock.engine``.

The only module that prints or exits.  Errors from below arrive as
``VmdockError``s and become one headline, a few detail lines (command, exit
code, stderr tail, log file) and an exit status (``vmdock.errors.EXIT_*``, the
table in README.md); ``--debug`` adds the traceback.

Every string that comes from a lab (titles, names, check output) goes through
``visible`` before it reaches the terminal: a title holding ``ESC ]0;…`` or
``ESC [2J`` shows as text and never drives the terminal.
"""
from __future__ import annotations

import sys
import traceback

import typer

from ..errors import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, EXIT_INTERRUPTED, EXIT_OK, VmdockError
from . import checks, host, labs  # noqa: F401  (each registers its commands on `app`)
from .common import OPTS, app, err_console, print_error, shown, visible

__all__ = ["app", "main", "shown", "visible"]



# -- entry point ------------------------------------------------------------------

def _split_remote_command(args: list[str]) -> tuple[list[str], list[str] | None]:
    """`vmdock [OPTIONS] ssh LAB [MACHINE] -- CMD...`: the words after `--` are the remote command.

    Click would take the first of them for MACHINE, so they are cut off before it parses.
    """
    for i, arg in enumerate(args):
        if arg == "ssh" and (i == 0 or args[i - 1] != "--labs-dir") and "--" in args[i:]:
            cut = args.index("--", i)
            return args[:cut], args[cut + 1:]
        if not arg.startswith("-") and (i == 0 or args[i - 1] != "--labs-dir"):
            break  # another command
    return args, None


def main(argv: list[str] | None = None) -> int:
    args, OPTS.remote_command = _split_remote_command(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = app(args=args, standalone_mode=False, prog_name="vmdock")
        code = rv if isinstance(rv, int) else EXIT_OK
    except VmdockError as exc:
        if OPTS.debug:
            traceback.print_exc()
        print_error(exc)
        code = exc.exit_status
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        err_console.print("[yellow]interrupted[/]: the lab's state is kept; run the same command again to resume")
        code = EXIT_INTERRUPTED
    except typer.TyperException as exc:  # a usage error (typer's public base of the click errors it vendors)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"[bold red]error:[/] {shown(exc)}", highlight=False, soft_wrap=True)
        code = int(getattr(exc, "exit_code", EXIT_BAD_INPUT))
    except Exception:  # a bug in vmdock: never exit 1 ("a check failed")
        traceback.print_exc()
        err_console.print("[bold red]error:[/] vmdock itself failed (the traceback above); please report it")
        code = EXIT_INFRASTRUCTURE
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
