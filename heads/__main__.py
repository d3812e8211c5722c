"""`python -m heads ...` is the `heads` command."""
from cli.heads_cli import main

if __name__ == "__main__":
    main()
