"""Figures and an HTML page that show robustness results to people (matplotlib, no server)."""
