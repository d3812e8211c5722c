"""What `featstore extract` takes (validated before any work) and what it reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InputError
from ..io.hashing import ALGORITHMS
from ..store import DEFAULT_FORMAT, FORMATS, check_url_format, compressions
from ..store.encoding import CODED, DTYPES, ENCODINGS
from .tasks import TASKS


@dataclass
class ExtractConfig:
    """Everything `featstore extract` takes; validated before any expensive work."""

    model: str
    data: dict[str, str]
    out: str
    text_column: str = "text"
    pair_column: str | None = None
    label_columns: list[str] = field(default_factory=list)
    id_column: str | None = None
    layers: str = "-1"
    max_length: int | None = None  # default: the model's limit, at most 512
    truncation: str | None = None  # default: longest_first; span tasks only_second (the context, never the question)
    dtype: str | None = None  # default float16; a float encoding and this are one setting
    encoding: str | None = None  # default: the dtype; int8 / fp8 store 8-bit codes decoded to float32
    project: int | None = None  # keep N principal directions per layer (PCA fitted on a sample of train)
    format: str = DEFAULT_FORMAT
    compression: str = "none"
    batch_tokens: int = 16384
    segment_mb: float = 256
    chunk_mb: float = 4.0
    io_threads: int | None = None  # threads that write and hash segment files (default: io.hashing)
    hash: str = "sha256"  # checksum of new files: sha256 or blake3 (faster; docs/speed.md)
    encode_on: str = "auto"  # 8-bit codes computed on the device (auto: when it is a GPU) or on the host writer
    device: str = "auto"
    compute_dtype: str = "auto"
    overwrite: bool = False
    allow_empty_text: bool = False
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options when `out` is a URL
    task: str = "sentence"  # sentence | token (NER, POS) | span (extractive QA)
    tokens_column: str = "tokens"  # token tasks from JSONL/Parquet: list columns
    tags_column: str = "tags"
    tag_scheme: str = "auto"  # auto | IOB2 | IOBES | none
    repair_tags: bool = False  # start entities whose I- has no B- instead of refusing the data
    repair_answers: bool = False  # move answers not at their offsets to the nearest occurrence of their text
    strict_labels: bool = False  # refuse a tag/class absent from the training split instead of keeping it
    stride: int | None = None  # span task: long contexts as overlapping windows sharing this many tokens
    space_check: bool = True  # refuse to start when --out's file system lacks the estimated bytes
    free_space: int | None = None  # bytes to check against instead of what the file system reports (a quota)

    def validate(self) -> None:
        """Every problem at once, as one line."""
        problems = []
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        elif self.encoding is not None and self.encoding not in ENCODINGS:
            problems.append(f"--encoding {self.encoding!r}: use one of {', '.join(ENCODINGS)}")
        elif self.encoding in CODED and self.dtype not in (None, "float32"):
            problems.append(f"--dtype {self.dtype} with --encoding {self.encoding}: 8-bit codes are computed from "
                            "float32 and decode to float32; drop --dtype")
        elif self.encoding in DTYPES and self.dtype not in (None, self.encoding):
            problems.append(f"--dtype {self.dtype} contradicts --encoding {self.encoding}; give one of them")
        else:  # resolved: `dtype` is what forward passes hand over and readers return
            self.encoding = self.encoding or self.dtype or "float16"
            self.dtype = "float32" if self.encoding in CODED else self.encoding
        if self.format not in FORMATS:
            problems.append(f"--format {self.format!r}: use {' or '.join(FORMATS)}")
        if self.max_length is not None and self.max_length < 2:
            problems.append("--max-length must be at least 2")
        if self.project is not None and self.project < 1:
            problems.append(f"--project {self.project}: give a positive width (e.g. a quarter of the hidden size)")
        if self.batch_tokens < 1:
            problems.append("--batch-tokens must be positive")
        if self.segment_mb <= 0 or self.chunk_mb <= 0:
            problems.append("--segment-mb and --chunk-mb must be positive")
        if self.truncation is None:
            self.truncation = "only_second" if self.task == "span" else "longest_first"
        if self.io_threads is not None and self.io_threads < 1:
            problems.append(f"--io-threads {self.io_threads}: give at least 1 (default: twice the cores, 2 to 8)")
        if self.encode_on not in ("auto", "device", "host"):
            problems.append(f"--encode-on {self.encode_on!r}: use auto, device or host")
        if self.hash not in ALGORITHMS:
            problems.append(f"--hash {self.hash!r}: use one of {', '.join(ALGORITHMS)}")
        if self.truncation not in ("longest_first", "only_first", "only_second"):
            problems.append(f"--truncation {self.truncation!r}: use longest_first, only_first or only_second")
        if self.compute_dtype not in ("auto",) + DTYPES:
            problems.append(f"--compute-dtype {self.compute_dtype!r}: use auto or one of {', '.join(DTYPES)}")
        codecs = compressions(self.format)
        if codecs and self.compression not in codecs:
            problems.append(f"--compression {self.compression!r} for {self.format}: use one of {', '.join(codecs)}")
        if self.task not in TASKS:
            problems.append(f"--task {self.task!r}: use one of {', '.join(TASKS)}")
        elif self.task != "sentence" and self.label_columns:
            problems.append(f"--label-column applies to sentence tasks; a {self.task} task's targets come from the "
                            "data (tags, answers)")
        problems += self._stride_problems()
        if self.task == "span" and self.truncation == "longest_first":
            self.truncation = "only_second"  # never cut the question: only the context
        url_problem = check_url_format(self.out, self.format) if self.format in FORMATS else None
        if url_problem:
            problems.append(url_problem)
        if problems:
            raise InputError("; ".join(problems))

    def _stride_problems(self) -> list[str]:
        """--stride windows a span task's context: only the context is cut (longest_first becomes only_second)."""
        if self.stride is None:
            return []
        if self.task != "span":
            return ["--stride windows the context of a span task (--task span); drop it"]
        if self.stride < 1:
            return [f"--stride {self.stride}: give the number of context tokens that consecutive windows share "
                    "(e.g. 128), at least 1"]
        if self.truncation not in ("only_second", "longest_first"):
            return [f"--truncation {self.truncation} with --stride: windows cut the context only; drop --truncation"]
        if self.max_length is not None and self.stride >= self.max_length:
            return [f"--stride {self.stride} must be smaller than --max-length {self.max_length}"]
        return []


@dataclass(kw_only=True)
class ExtractSummary:
    out: str
    fingerprint: str
    examples: dict[str, int]
    tokens: int
    truncated: int
    bytes_written: int
    seconds: float
    segments_total: int
    segments_resumed: int
    device: str
    already_complete: bool = False
    loop_seconds: float = 0.0  # forward passes + writing, without model loading and hashing
    rank: int = 0  # under torchrun: this process's rank (tokens and bytes are summed over every rank)
    task_counts: dict[str, dict[str, int]] | None = None  # token/span: words / answers lost to truncation per split
    # column (`tags` for token tasks) -> label -> split -> count, for the labels absent from the training split:
    # kept in the vocabulary; a head cannot learn them from train, evaluation scores them (errors when missed)
    unseen_labels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def summary_dict(s: ExtractSummary) -> dict[str, Any]:
    d = asdict(s)
    d["tokens_per_second"] = s.tokens_per_second
    return d
