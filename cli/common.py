"""What every command shares: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from featstore.errors import FeatstoreError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into `error: ...` + exit 2; Ctrl-C into a resumable note + exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FeatstoreError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: committed work is kept; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def parse_options(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{p!r}: use KEY=VALUE", param_hint=flag)
        out[k] = v
    return out
