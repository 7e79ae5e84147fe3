"""`python -m cifarkit ...` (and `torchrun -m cifarkit ...`) run the command-line tool."""

from cifarkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
