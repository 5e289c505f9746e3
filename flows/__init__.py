"""Prefect flows: the command-line and scheduled entry points; no domain logic of their own."""
