"""The models.conf entries the TF Serving tests list (the SavedModels are conftest's `savedmodels`)."""

# plus: x [N,1] float -> y = x + version. The policy serves 1 and 2; 3 is on disk too.
PLUS = """
  config {
    name: 'plus'
    base_path: 'plus'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
"""
# text [N,1] string -> length (int32), upper (string), echo_bytes (string)
STRINGS = "config { name: 'strings' base_path: 'strings' }"
# classify and regress signatures over serialized tf.Examples with a float feature x
CLASSIFIER = "config { name: 'classifier' base_path: 'classifier' }"
REGRESSOR = "config { name: 'regressor' base_path: 'regressor' }"
# version 1's saved_model.pb is not a SavedModel
BROKEN = "config { name: 'broken' base_path: 'broken' }"
