"""Extraction: read inputs, load the frozen model, plan segments and batches, forward, write in the
background, finalize. Imports torch and transformers only when `extract` runs."""
from .run import ExtractConfig, ExtractSummary, extract, summary_dict

__all__ = ["ExtractConfig", "ExtractSummary", "extract", "summary_dict"]
