"""Run as: python -m studio {train,data,push} ... (see `python -m studio --help`)."""

from studio.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
