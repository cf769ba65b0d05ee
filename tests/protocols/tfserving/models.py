"""The models.conf entries the TF Serving tests list (the SavedModels are conftest's `savedmodels`)."""

from pathlib import Path

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

# TF Serving's own test SavedModels (tensorflow_serving/servables/tensorflow/testdata), TF1 exports
# with several signatures and inputs of unknown rank, under the names TF Serving's tests use.
TESTDATA = Path(__file__).resolve().parents[3].parent / "shared" / "thirdparty" / "tensorflow-serving" / "testdata"
# 0.5x + 2: serving_default (x -> y), classify_x_to_y, regress_x_to_y, regress_x_to_y2 (0.5x + 3),
# regress_x2_to_y3 (x2 -> 0.5x2 + 4); version 123
HALF_PLUS_TWO = f"config {{ name: 'half_plus_two' base_path: '{TESTDATA / 'saved_model_half_plus_two_cpu'}' }}"
# 0.5x + 3: serving_default and 'tensorflow/serving/regress' (the api_rest.md example); version 123
HALF_PLUS_THREE = f"config {{ name: 'saved_model_half_plus_three' base_path: '{TESTDATA / 'saved_model_half_plus_three'}' }}"
# half_plus_two at versions 123 and 124, as http_rest_api_handler_test.cc serves it (version 123, labelled)
TWO_VERSIONS = f"""
  config {{
    name: 'saved_model_half_plus_two_2_versions'
    base_path: '{TESTDATA / 'saved_model_half_plus_two_2_versions'}'
    model_version_policy {{ specific {{ versions: 123 }} }}
    version_labels {{ key: 'Version_Label' value: 123 }}
  }}
"""
