"""`python -m featstore ...` is the `featstore` command (so `torchrun -m featstore extract ...` works)."""
from cli.featstore_cli import main

if __name__ == "__main__":
    main()
