"""Probe kinds: one module each, registered in ``PROBES`` (probes/registry.py)."""
