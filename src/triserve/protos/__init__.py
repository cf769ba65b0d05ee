"""TensorFlow and TF Serving messages compiled from the .proto files here (scripts/gen-protos):
TF Serving's field names and numbers under a `triserve.` package prefix, so they need no
TensorFlow and never clash with TensorFlow's own definitions in one process."""
