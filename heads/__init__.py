"""heads: train Y-Tuning label modules (and linear / MLP probes) on a featstore store, no backbone in memory.

    from heads import TrainConfig, train, evaluate, predict, load_head
    result = train(TrainConfig("ytuning", store="stores/sst2", label_column="label", out="runs/sst2"))
    evaluate("runs/sst2", "stores/sst2", "test").metrics
    predict("runs/sst2", ["a gripping, beautifully shot film"])   # loads the backbone named in the head

Only `predict` loads a backbone (and imports transformers); training and evaluation read the store alone.
"""
__version__ = "0.1.0"

from .artifacts import LoadedHead, load_head  # noqa: E402
from .config import HeadSpec, TrainConfig  # noqa: E402
from .errors import HeadError  # noqa: E402
from .evaluate import EvalResult, evaluate  # noqa: E402
from .predict import predict  # noqa: E402
from .train import SeedResult, TrainResult, train  # noqa: E402

__all__ = ["train", "evaluate", "predict", "load_head", "TrainConfig", "HeadSpec", "TrainResult", "SeedResult",
           "EvalResult", "LoadedHead", "HeadError", "__version__"]
