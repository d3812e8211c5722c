"""The suite runs offline from its first fixture on, however pytest is invoked (not only through `make test`)."""
from __future__ import annotations

import os


def test_offline_before_the_models_were_built(models_dir):
    import huggingface_hub.constants

    # huggingface_hub reads the variable once, when it is first imported (building the session's models):
    # True here means it was already set then, not only by a function-scoped fixture afterwards.
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
