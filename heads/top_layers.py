"""Tune the top m transformer layers from a store: the bottom of the backbone is never loaded or run.

A store that keeps hidden_states[N-m] at full float precision holds everything the top m layers need: they are
rebuilt from the backbone's config, and only their tensors are read from its safetensors checkpoint (plus
DeBERTa-v2's relative-position embeddings and their LayerNorm, which every layer uses). A training step then
costs the forward and backward of m layers on stored inputs instead of all N: about m/N of fine-tuning's.

What the head reads (`plan_top`):
    tokens (ytuning)  the selected stored layers up to N-m, as stored, plus every tuned layer's output
                      (N-m+1 .. N); stored layers above N-m are never read (the tuned layers recompute them).
    pooled (linear)   the tuned last layer N, pooled (cls or mean) inside the model from its token outputs.

Weights check: a store's `weights_sha256` covers every tensor of the backbone and cannot be recomputed from m
layers. Extraction also records `part_sha256` (one hash per encoder layer and one of the encoder's shared
tensors, `featstore.extract.models.part_hashes`); the tensors read here are hashed the same way and must match.
Stores extracted before that have no per-layer hashes: the layers are then loaded unverified, and head.json
says so.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .errors import HeadError, InputError, StoreError

SUPPORTED = ("bert", "roberta", "xlm-roberta", "deberta-v2")
TOP_WEIGHTS = "top_layers.safetensors"  # tuned layers beside head.safetensors (and in seeds/<seed>/)
LOSSLESS = ("float16", "bfloat16", "float32")


@dataclass(kw_only=True)
class TopPlan:
    """Which stored layers are read, which feed the tuned layers and which the head sees."""

    m: int
    num_layers: int  # N
    input_layer: int  # N - m: the stored hidden_states index fed to the first tuned layer
    read_layers: list[int]  # stored layers the loader reads (sorted; includes input_layer)
    head_layers: list[int]  # hidden_states indices the head reads, in order (stored ones, then tuned ones)
    model_type: str


@dataclass(kw_only=True)
class CheckpointRead:
    """What was read from the backbone's checkpoint: a test checks the bottom layers never were."""

    directory: str
    files: list[str]
    keys: list[str]  # full-model tensor names read
    prefix: str  # e.g. "" for a saved BertModel, "bert." for a BertForSequenceClassification
    verified: str  # how the tensors were checked
    layer_hashes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_top(manifest: dict[str, Any], store_layers: Sequence[int], m: int, feature: str,
             selected: Sequence[int]) -> TopPlan:
    """Check the store can feed the top m layers of a head reading `feature` (tokens | pooled); one line for
    each refusal."""
    model = manifest["model"]
    settings = manifest["settings"]
    mt = (model.get("config") or {}).get("model_type")
    if mt not in SUPPORTED:
        raise InputError(f"--tune-top-layers supports the {', '.join(SUPPORTED)} families; this store's backbone "
                         f"is {mt or model.get('architecture')!r}")
    n = int(model["num_layers"])
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= n:
        raise InputError(f"--tune-top-layers {m!r}: must be between 1 and the backbone's {n} layers")
    enc = settings.get("encoding", settings["dtype"])
    if enc not in LOSSLESS or settings["dtype"] not in LOSSLESS:
        raise StoreError(f"--tune-top-layers needs the stored layer {n - m} at full float precision; this store is "
                         f"{enc}-encoded (lossy): re-extract with --dtype float16 and no --encoding")
    if settings.get("project"):
        raise StoreError(f"--tune-top-layers needs the stored layer {n - m} at full width; this store is projected "
                         f"to {settings['project']} dimensions: re-extract without --project")
    first = n - m
    if first not in store_layers:
        raise StoreError(f"--tune-top-layers {m} feeds the stored layer {first} (hidden_states[{n}-{m}]) to the "
                         f"tuned layers; this store holds {list(store_layers)}: re-extract with --layers including {first}")
    if feature == "tokens":
        low = [k for k in selected if k <= first]
        head_layers = low + list(range(first + 1, n + 1))
        read = sorted(set(low) | {first})
    else:  # pooled: the tuned last layer, pooled inside the model
        head_layers, read = [n], [first]
    return TopPlan(m=m, num_layers=n, input_layer=first, read_layers=read, head_layers=head_layers, model_type=mt)


def _config(config: dict[str, Any], num_layers: int) -> Any:
    from transformers import AutoConfig

    d = {k: v for k, v in config.items() if k != "model_type"}
    d["num_hidden_layers"] = num_layers
    cfg = AutoConfig.for_model(config["model_type"], **d)
    cfg._attn_implementation = "eager"  # the same arithmetic on every device; padding masked additively
    return cfg


class _Encoder(nn.Module):
    """BERT / RoBERTa: the layers alone (they share nothing); named like the full model's encoder."""

    def __init__(self, config: Any, model_type: str, m: int):
        super().__init__()
        if model_type == "bert":
            from transformers.models.bert.modeling_bert import BertLayer as Layer
        elif model_type == "roberta":
            from transformers.models.roberta.modeling_roberta import RobertaLayer as Layer
        else:
            from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaLayer as Layer
        self.layer = nn.ModuleList(Layer(config) for _ in range(m))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        # h (B, T, D); mask (B, T) True on real tokens -> additive (B, 1, 1, T)
        add = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=h.dtype, device=h.device)
        add = add.masked_fill(~mask[:, None, None, :], torch.finfo(h.dtype).min)
        outs = []
        for layer in self.layer:
            h = layer(h, attention_mask=add)
            h = h[0] if isinstance(h, tuple) else h
            outs.append(h)
        return outs  # m x (B, T, D)


class TopLayers(nn.Module):
    """The top m layers of a BERT / RoBERTa / DeBERTa-v2 encoder, fed hidden_states[N-m]; returns layers N-m+1..N.

    Parameters are named `encoder.layer.<j>...` (j = 0..m-1) and, for DeBERTa-v2, `encoder.rel_embeddings`,
    `encoder.LayerNorm`: `full_model_keys` maps them to the full model's names.
    """

    def __init__(self, config: dict[str, Any], num_layers: int, m: int):
        super().__init__()
        self.model_type, self.num_layers, self.m = config["model_type"], num_layers, m
        self.first = num_layers - m
        if self.model_type == "deberta-v2":
            from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Encoder

            sub = dict(config)
            if m < num_layers:  # the conv applies after the backbone's first layer only
                sub["conv_kernel_size"] = 0
            self.encoder = DebertaV2Encoder(_config(sub, m))
        else:
            self.encoder = _Encoder(_config(config, m), self.model_type, m)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        # h (B, T, D) = hidden_states[N-m]; mask (B, T) bool
        if self.model_type == "deberta-v2":
            out = self.encoder(h, mask.long(), output_hidden_states=True)
            return list(out.hidden_states[1:])  # m x (B, T, D)
        return self.encoder(h, mask)

    def full_model_keys(self, prefix: str = "") -> dict[str, str]:
        """Own state-dict name -> the full model's (layer j -> layer N-m+j)."""
        out = {}
        for k in self.state_dict():
            m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", k)
            out[k] = (f"{prefix}encoder.layer.{self.first + int(m.group(1))}.{m.group(2)}" if m else f"{prefix}{k}")
        return out


def _checkpoint_files(directory: str) -> dict[str, str]:
    """Tensor name -> safetensors file of a model directory (single file or sharded index)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return {k: os.path.join(directory, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="pt") as f:
            return {k: single for k in f.keys()}
    raise InputError(f"backbone {directory} has no safetensors checkpoint (model.safetensors); --tune-top-layers "
                     "reads only safetensors (re-save the model with save_pretrained)")


def _backbone_dir(model: dict[str, Any], override: str | None) -> str:
    from featstore.extract.models import resolve_model_name

    name = override or model.get("path") or model.get("name")
    path = resolve_model_name(name)
    if os.path.isdir(path):
        return path
    try:  # a hub id: the cached snapshot's files (downloaded when online)
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.safetensors", "*.json"])
    except Exception as e:  # noqa: BLE001 - offline, unknown id, ...
        raise InputError(f"cannot find the backbone {name!r} the store was extracted with ({type(e).__name__}); "
                         "pass --backbone with its local directory")


def load_top_layers(manifest: dict[str, Any], m: int, backbone: str | None = None) -> tuple[TopLayers, CheckpointRead]:
    """Build the top m layers from the store's recorded config; read only their tensors from the checkpoint."""
    from safetensors import safe_open

    from featstore.extract.models import part_hashes

    model = manifest["model"]
    top = TopLayers(model["config"], int(model["num_layers"]), m)
    directory = _backbone_dir(model, backbone)
    where = _checkpoint_files(directory)
    probe = f"encoder.layer.{top.first}."
    prefix = next((p for p in (k[:k.index(probe)] for k in where if probe in k) if p == "" or p.endswith(".")), None)
    if prefix is None:
        raise HeadError(f"backbone {directory}: its checkpoint has no tensors named like '{probe}*'; it is not the "
                        f"{top.model_type} encoder the store names")
    names = top.full_model_keys(prefix)
    missing = [v for v in names.values() if v not in where]
    if missing:
        raise HeadError(f"backbone {directory}: its checkpoint lacks {missing[:3]} needed by the top {m} layers")
    state, by_file = {}, {}
    for own, full in names.items():
        by_file.setdefault(where[full], []).append((own, full))
    for path, pairs in by_file.items():
        with safe_open(path, framework="pt") as f:
            for own, full in pairs:
                state[own] = f.get_tensor(full).to(torch.float32)
    read = {names[k]: v for k, v in state.items()}
    got = part_hashes({k[len(prefix):]: v for k, v in read.items()})
    want = model.get("part_sha256")
    if want:
        bad = [p for p in got if want.get(p) != got[p]]
        if bad:
            raise HeadError(f"backbone {directory}: its {', '.join(sorted(bad))} weights differ from those the store "
                            "was extracted with; pass --backbone with the right model directory")
        verified = f"per-layer sha256 recorded at extraction ({', '.join(sorted(got))})"
    else:
        verified = "unverified: the store predates per-layer hashes (part_sha256); re-extract to check them"
        print(f"warning: {verified}", file=sys.stderr)
    top.load_state_dict(state, strict=True)
    info = CheckpointRead(directory=os.path.abspath(directory), files=sorted({os.path.basename(p) for p in by_file}),
                          keys=sorted(read), prefix=prefix, verified=verified, layer_hashes=got)
    return top, info


class TunedModel(nn.Module):
    """Stored layers -> tuned top layers -> head: trained together (the head's `model(x, mask)` interface).

    x (B, T, L_read, D) holds the stored `read_layers`; the head gets (B, T, L_head, D) tokens (ytuning) or the
    pooled (B, 1, D) last layer (linear).
    """

    def __init__(self, top: TopLayers, head: nn.Module, plan: TopPlan, pooling: str | None):
        super().__init__()
        self.top, self.head, self.pooling = top, head, pooling
        self.input_index = plan.read_layers.index(plan.input_layer)
        self.picks = [("stored", plan.read_layers.index(k)) if k <= plan.input_layer else
                      ("tuned", k - plan.input_layer - 1) for k in plan.head_layers]

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        outs = self.top(x[:, :, self.input_index], mask)  # m x (B, T, D)
        feats = [x[:, :, i] if kind == "stored" else outs[i] for kind, i in self.picks]
        h = torch.stack(feats, dim=2)  # (B, T, L_head, D)
        if self.pooling is None:
            return h
        if self.pooling == "cls":
            return h[:, 0]  # (B, L_head, D)
        w = mask.to(h.dtype)[:, :, None, None]  # (B, T, 1, 1)
        return (h * w).sum(1) / w.sum(1)  # (B, L_head, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x, mask)
        if self.pooling is not None:
            return self.head(h)
        return self.head(h, mask) if segments is None else self.head(h, mask, segments)


@torch.no_grad()
def pooled_stats(model: TunedModel, loader: Any, device: torch.device) -> tuple[Any, Any]:
    """Mean and std of the initial pooled features over the training split (a linear head's standardisation)."""
    import numpy as np

    from .runtime import to_device

    model.eval()
    s = ss = None
    n = 0
    for batch in loader.epoch(0):
        x, mask = to_device(batch, device)
        f = model.features(x, mask).flatten(1).double().cpu()  # (B, L*D)
        s = f.sum(0) if s is None else s + f.sum(0)
        ss = (f * f).sum(0) if ss is None else ss + (f * f).sum(0)
        n += f.shape[0]
    mean = (s / n).numpy()
    return mean, np.sqrt(np.maximum((ss / n).numpy() - mean ** 2, 0.0))


def build_saved(meta: dict[str, Any], state: dict[str, torch.Tensor], head: nn.Module) -> TunedModel:
    """A trained run's model from head.json (config, plan) and its saved tuned layers; no checkpoint read."""
    t = meta["top_layers"]
    plan = TopPlan(**t["plan"])
    top = TopLayers(t["config"], plan.num_layers, plan.m)
    try:
        top.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HeadError(f"{TOP_WEIGHTS} does not fit the top {plan.m} layers ({str(e).splitlines()[0][:160]}); "
                        "the head is damaged")
    return TunedModel(top, head, plan, t["pooling"])


def export_full_keys(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tuned layers under the full model's state-dict names (prefix-free, as a saved `AutoModel`)."""
    t = meta["top_layers"]
    plan = TopPlan(**t["plan"])
    top = TopLayers(t["config"], plan.num_layers, plan.m)
    names = top.full_model_keys("")
    return {names[k]: v for k, v in state.items()}


def load_saved(meta: dict[str, Any], path: str, head: nn.Module) -> TunedModel:
    """The tuned layers saved beside a head (`path`), wrapped around it."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise HeadError(f"{path} is missing: the head was trained with --tune-top-layers; re-train or re-copy it")
    try:
        state = load_file(path)
    except Exception as e:  # noqa: BLE001 - any failure to parse means a damaged file
        raise HeadError(f"{path} is corrupt or not a safetensors file ({type(e).__name__}); re-train or re-copy it")
    return build_saved(meta, state, head)


@dataclass
class TopSetup:
    """Tuned top layers for a training run: the plan, the layers as loaded, what was read to load them."""

    plan: TopPlan
    top0: TopLayers
    read: CheckpointRead
    top_lr: float
    weight_decay: float
    config: dict[str, Any]  # the backbone's, from the store's manifest

    def wrap(self, head: nn.Module, spec: Any, train_loader: Any, device: torch.device
             ) -> tuple[nn.Module, list[dict[str, Any]], nn.Module | None]:
        """A fresh copy of the top layers under `head`: (model, their parameter groups, the part kept frozen)."""
        import copy

        from .trainer import param_groups

        layers_top = copy.deepcopy(self.top0)
        model = TunedModel(layers_top, head, self.plan, spec.pooling).to(device)
        if hasattr(head, "set_input_stats"):  # a probe standardises the pooled tuned features
            head.set_input_stats(*pooled_stats(model, train_loader, device))
        frozen = self.top_lr == 0
        layers_top.requires_grad_(not frozen)
        groups = [] if frozen else param_groups(layers_top, self.weight_decay, self.top_lr)
        return model, groups, layers_top if frozen else None

    def meta(self, cfg: Any, pooling: str | None) -> dict[str, Any]:
        """head.json fields: eval and predict read `layers` from a store or a truncated backbone."""
        return {"layers": self.plan.read_layers,
                "top_layers": {"plan": asdict(self.plan), "head_layers": self.plan.head_layers, "top_lr": cfg.top_lr,
                               "pooling": pooling, "weights": TOP_WEIGHTS,
                               "config": self.config, "checkpoint": self.read.to_json()}}


def setup_top(manifest: dict[str, Any], store_layers: Sequence[int], cfg: Any, feature: str,
              selected: Sequence[int]) -> TopSetup:
    plan = plan_top(manifest, store_layers, cfg.tune_top_layers, feature, selected)
    top0, read = load_top_layers(manifest, plan.m, cfg.backbone)
    return TopSetup(plan=plan, top0=top0, read=read, top_lr=cfg.top_lr, weight_decay=cfg.weight_decay,
                    config=manifest["model"]["config"])
