"""Jitted analysis functions, one module per proposition of arXiv 2601.05002."""
