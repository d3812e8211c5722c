"""Sharing stores: publish to any fsspec URL (`push`), fetch verified copies (`pull`), list (`ls`)."""
from .listing import format_ls, ls
from .transfer import TransferResult, pull, push

__all__ = ["push", "pull", "ls", "format_ls", "TransferResult"]
