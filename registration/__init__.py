"""Slide-to-slide registration with Elastix (issue 3; not built yet)."""
