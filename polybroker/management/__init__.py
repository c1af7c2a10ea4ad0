"""Operator visibility: the management HTTP listener, its JSON API and metrics."""
