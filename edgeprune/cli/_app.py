"""The typer application and its error layer: known errors become one line and exit code 1."""

from __future__ import annotations

import logging
import os
import sys

import typer

app = typer.Typer(
    name="edgeprune",
    help="Shrink trained PyTorch models (SeReNe), cut them to slim dense models, export and benchmark them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
analyze_app = typer.Typer(help="Analyze a model: sensitivities, PSP-entropy, sharpness, loss landscape.",
                          no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    trust_code: list[str] = typer.Option(None, "--trust-code", help="Allow importing this user code named by a "
                                         "checkpoint's architecture (package.module or file.py; repeatable). Importing "
                                         "code runs it: only for code you trust."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    setup_logging(level)
    if trust_code:
        from ..models import trust_code as allow

        allow(*trust_code)


def setup_logging(level: int = logging.INFO) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    root = logging.getLogger("edgeprune")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: not _is_notice(record))
    root.addHandler(handler)
    root.setLevel(level)
    bench_log = logging.getLogger("android_bench")
    bench_log.handlers = root.handlers[:] + [_NoticeHandler()]
    bench_log.setLevel(level)


def _is_notice(record: logging.LogRecord) -> bool:
    return bool(getattr(record, "notice", False))


class _NoticeHandler(logging.Handler):
    """Library records marked ``notice`` (e.g. "created a new adb key: the phone will ask") are part of what the
    command tells the user, so they go to stdout: stderr keeps the one-line error contract."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(_is_notice)

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"note: {record.getMessage()}")


def echo(text: str = "") -> None:
    """Print for people (stdout)."""
    typer.echo(text)


def print_table(table) -> None:
    from rich.console import Console

    Console().print(table)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape`` as a tuple of positive integers (``"3,32,32"`` → ``(3, 32, 32)``); None when not given."""
    from ..errors import ConfigError

    if not text:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers like 3,32,32, got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"--input-shape must be positive integers like 3,32,32, got {text!r}")
    return shape


def parse_json_object(text: str | None, option: str) -> dict:
    """A JSON object option (``--arch-kwargs '{"width": 32}'``); {} when not given."""
    import json

    from ..errors import ConfigError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}; "
                          'write it like \'{"width": 32}\'') from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object like '{{\"width\": 32}}', got {text!r}")
    return value


def debug_enabled() -> bool:
    return os.environ.get("EDGEPRUNE_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)
