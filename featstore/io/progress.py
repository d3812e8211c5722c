"""Progress bars that never end up in logs: shown only when asked for and stderr is a terminal."""
from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool, iterable: Any = None, **kw: Any) -> Any:
    """A tqdm bar; with stderr redirected (`featstore verify S 2>&1 | tail`, a batch job's log) it stays silent."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kw)
