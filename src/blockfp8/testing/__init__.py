"""Helpers shared by the test-suite and GPU checks (tolerances, shapes)."""
