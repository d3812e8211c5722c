"""A worker of `heads sweep --workers N`: its settings arrive as JSON on stdin (never in a file: they may hold
storage credentials)."""
import sys

from ..errors import InputError
from .driver import worker_main

try:
    worker_main(sys.stdin.read())
except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
