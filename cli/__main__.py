"""`python -m cli`: the same as the `loopgate` console script."""

from __future__ import annotations

from cli import main

if __name__ == "__main__":
    main()
