"""featstore: extract a frozen encoder's hidden states once into a shareable, verified store."""
__version__ = "0.1.0"

from .errors import ExtractionError, FeatstoreError, InputError, StoreError  # noqa: E402
from .reader import Split, Store, open_store  # noqa: E402


def extract(config):  # noqa: D103 - lazy: importing torch/transformers only when extracting
    from .extract import extract as _extract

    return _extract(config)


__all__ = ["open_store", "Store", "Split", "extract", "FeatstoreError", "InputError", "StoreError",
           "ExtractionError", "__version__"]
