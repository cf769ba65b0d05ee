"""Example models used to produce real test artefacts (need the optional ``examples`` extra)."""
