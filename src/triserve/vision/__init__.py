"""Image decoding, preprocessing and top-k postprocessing shared by handlers, client and CLI."""
