"""Errors a user can cause or fix. Subclasses of featstore's base, so the CLI's one-line wrapper covers both."""
from featstore.errors import FeatstoreError, InputError, StoreError


class HeadError(FeatstoreError):
    """A head directory that is missing, corrupt, of another format version, or does not fit a store."""


__all__ = ["HeadError", "InputError", "StoreError", "FeatstoreError"]
