"""Extraction: read inputs, load the frozen model, plan segments and batches, forward, write in the
background, finalize. Imports torch and transformers only when `extract` runs."""
from .config import ExtractConfig, ExtractSummary, summary_dict
from .run import extract

__all__ = ["ExtractConfig", "ExtractSummary", "extract", "summary_dict"]
