"""Typed errors raised at the library's boundaries.

Every user mistake becomes one of these, carrying one line that names the problem and the fix; the CLI
prints that line and exits with code 2.
"""


class FeatstoreError(Exception):
    """Base class for every error a user can cause or fix."""


class InputError(FeatstoreError):
    """Bad command-line arguments or input data (missing file, column, empty split...)."""


class StoreError(FeatstoreError):
    """A store that is missing, incomplete, of another version, or differs from what was asked."""


class ExtractionError(FeatstoreError):
    """The model produced something we refuse to store (non-finite features)."""


class RankFailed(FeatstoreError):
    """Under torchrun: one rank failed; the message names the rank and the cause, on one line."""


class PeerFailed(FeatstoreError):
    """Under torchrun: this rank stopped because another one failed (that rank reports the cause)."""


class NewerFormatError(StoreError):
    """A store written in a format version newer than this reader: not damage, the reader needs an upgrade."""


class Stopped(FeatstoreError):
    """SIGTERM arrived: the run stopped at a safe point with its committed work kept (a re-run resumes)."""
