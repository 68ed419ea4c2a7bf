"""The ``edgeprune`` command line: thin commands that parse options, call one library function and render."""

from __future__ import annotations

import importlib
import sys

from ._app import app, debug_enabled

# Each module registers its commands on ``app`` (or ``analyze_app``) when imported.
COMMAND_MODULES = (
    "train",
    "info",
    "oneshot",
    "analyze",
    "bench",
    "surgery",
    "compress",
    "analyze_sensitivity",
    "export",
    "report",
    "profile",
)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning known errors into one line and exit code 1."""
    import typer

    from ..errors import EdgepruneError

    _load_commands()
    try:
        app(args=argv, prog_name="edgeprune")
    except SystemExit as exc:  # typer's standalone mode: usage errors (2), --help (0), fail() (1)
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        typer.echo("interrupted: progress so far is saved; rerun with --resume to continue", err=True)
        return 130
    except (EdgepruneError, FloatingPointError) as exc:
        if debug_enabled():
            raise
        typer.echo(f"error: {exc}", err=True)
        return 1
    except Exception as exc:  # anything unexpected: one line, traceback on request
        if debug_enabled():
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {first} (set EDGEPRUNE_DEBUG=1 for the traceback)", err=True
        )
        return 1
    return 0


def run() -> None:
    sys.exit(main())
