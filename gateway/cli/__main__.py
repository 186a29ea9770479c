"""`python -m gateway.cli`: the same as the `loopgate` console script."""

from __future__ import annotations

from gateway.cli import main

if __name__ == "__main__":
    main()
