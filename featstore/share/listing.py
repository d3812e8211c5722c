"""`featstore ls`: the stores published under a prefix, from their manifests alone (no data file is read)."""
from __future__ import annotations

from typing import Any

from ..errors import StoreError
from ..io.transport import Remote, is_url, printable
from ..store.manifest import MANIFEST, PUSH_MARKER, transfer_files
from ..store.remote_backend import parse_manifest


# -- ls --------------------------------------------------------------------------------------------------

def ls(prefix: str, storage_options: dict[str, Any] | None = None, max_depth: int = 4) -> tuple[list[dict], list[str]]:
    """Stores under `prefix`, from their manifests alone: (entries, problems). Status `published` under a URL,
    `complete` under a plain local path (a store there may never have been pushed), `unfinished` for an upload
    in progress; unreadable or unsafe manifests are reported as problems."""
    remote = Remote(prefix, storage_options)
    entries: list[dict] = []
    problems: list[str] = []
    base = remote.root.rstrip("/")
    queue: list[tuple[str, int]] = [(base, 0)]
    while queue:
        path, depth = queue.pop(0)
        children = remote.ls(path)
        names = {c["name"].rstrip("/").rsplit("/", 1)[-1]: c for c in children}
        rel = path[len(base):].strip("/") or "."
        url = remote.url if rel == "." else f"{remote.url.rstrip('/')}/{rel}"
        if MANIFEST in names:
            try:
                raw = remote.read_small(MANIFEST if rel == "." else f"{rel}/{MANIFEST}")
                m = parse_manifest(raw or b"", url)
                entries.append(_entry(rel, url, m, "published" if is_url(prefix) else "complete"))
            except StoreError as e:
                problems.append(str(e))
            continue
        if PUSH_MARKER in names:
            entries.append({"name": printable(rel), "url": printable(url), "status": "unfinished"})
            continue
        if depth < max_depth:
            for c in children:
                if c.get("type") == "directory" and not c["name"].rstrip("/").rsplit("/", 1)[-1].startswith("."):
                    queue.append((c["name"].rstrip("/"), depth + 1))
    entries.sort(key=lambda e: e["name"])
    return entries, problems


def _entry(name: str, url: str, m: dict, status: str) -> dict[str, Any]:
    return {
        "name": printable(name), "url": printable(url), "status": status, "format": m["format"],
        "model": printable(m["model"].get("name")), "layers": m["settings"]["layers"],
        "splits": {k: v["n_examples"] for k, v in m["dataset"]["splits"].items()},
        "label_columns": [c["name"] for c in m["dataset"].get("label_columns", [])],
        "bytes": sum(f["size"] for f in transfer_files(m).values()), "fingerprint": m["fingerprint"],
        "created": printable(m.get("created")), "dtype": m["settings"]["dtype"],
    }


def format_ls(entries: list[dict]) -> str:
    from ..io.files import format_bytes

    head = ("NAME", "MODEL", "LAYERS", "SPLITS", "SIZE", "FINGERPRINT", "CREATED")
    rows = []
    for e in entries:
        if e["status"] == "unfinished":
            rows.append((e["name"], "(unfinished upload)", "", "", "", "", ""))
            continue
        rows.append((e["name"], _short(e["model"], 40), ",".join(map(str, e["layers"])),
                     " ".join(f"{k}:{v}" for k, v in e["splits"].items()), format_bytes(e["bytes"]),
                     e["fingerprint"][:12], e["created"] or ""))
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows)


def _short(s: str | None, n: int) -> str:
    s = s or "?"
    return s if len(s) <= n else "..." + s[-(n - 3):]


