"""Run as: python -m studio COMMAND ... (see `python -m studio --help`)."""

from studio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
