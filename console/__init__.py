"""Loopgate Console: server-rendered pages for product teams and reviewers."""
