"""What every command shares: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import click

from featstore.errors import FeatstoreError, PeerFailed, Stopped


RESUMABLE = "interrupted: committed work is kept; re-run the same command to resume"
NOT_RESUMABLE = "interrupted: nothing was written"


def user_errors(fn: Callable[..., Any] | None = None, *, interrupted: str = NOT_RESUMABLE) -> Any:
    """Turn library errors into `error: ...` + exit 2; Ctrl-C into `interrupted` + exit 130.

    Files the user named that cannot be read or written (missing directory, a file where a directory is
    expected, no permission, undecodable text) are user errors too: one line with the path, exit 2.
    """
    if fn is None:
        return functools.partial(user_errors, interrupted=interrupted)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PeerFailed as e:  # not the cause: the rank that failed prints the `error:` line
            click.echo(str(e), err=True)
            sys.exit(1)
        except Stopped as e:  # SIGTERM honoured at a safe point: the conventional 128 + 15
            click.echo(f"interrupted: {e}", err=True)
            sys.exit(143)
        except FeatstoreError as e:
            fail(str(e))
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            fail(f"{where}{e.strerror or e}; check the path and its permissions")
        except UnicodeDecodeError as e:
            fail(f"input is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8")
        except KeyboardInterrupt:
            click.echo(interrupted, err=True)
            sys.exit(130)

    return wrapper


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def storage_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--storage-option KEY=VALUE (repeatable) for commands that take a URL; parse with `options`."""
    return click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                        help="fsspec option for a URL (repeatable; JSON values, dotted keys nest), e.g. "
                             "client_kwargs.endpoint_url=http://localhost:9000 or anon=true.")(fn)


def cache_dir(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--cache-dir", default=None, metavar="DIR",
                        help="Local cache for stores read from a URL (default: $FEATSTORE_CACHE_DIR or the user "
                             "cache directory; bound: $FEATSTORE_CACHE_MAX_GB, default 50).")(fn)


def options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """--storage-option values -> fsspec options."""
    from featstore.io.transport import parse_storage_options

    return parse_storage_options(list(pairs))


def check_writable(path: str, flag: str) -> None:
    """Before any expensive work: an output file's directory must exist and be writable."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a directory; give a file name", param_hint=flag)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise click.BadParameter(f"cannot write {path}: {parent} is not a writable directory", param_hint=flag)


class OneLineErrors(click.Group):
    """Usage mistakes (a bad option value, a missing argument) as one line naming the fix, exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            fail(f"{e.format_message()} (see `{where} --help`)")
