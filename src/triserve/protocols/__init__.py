"""Protocol adapters: decode the wire format, call the core, encode the answer."""
