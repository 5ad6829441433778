"""Runs the transports of each tracked order and feeds the core (issue 6)."""
