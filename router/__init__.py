"""Routing core: flags, sticky monotone assignment, and the stores that hold flags."""
