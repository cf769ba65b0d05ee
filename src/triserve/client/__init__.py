"""Client-side tools built on the PyPI tritonclient, so they work against any v2 server."""
