"""Small SavedModels written with TensorFlow for the TF Serving tests, and a TF Serving layout
(`base_path/<version>/saved_model.pb`) made from the example EfficientNet-Lite0 SavedModel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _save(module, path: Path, function) -> Path:
    import tensorflow as tf

    tmp = path.with_name(f".{path.name}.partial")
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": function})
    tmp.rename(path)  # a version folder appears complete, as a TF Serving user is told to do
    return path


def adder(path: Path, n: float) -> Path:
    """serving_default: x [N,1] float -> y = x + n."""
    import tensorflow as tf

    class Adder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x + n}

    module = Adder()
    return _save(module, path, module.serve)


def strings(path: Path) -> Path:
    """serving_default: text [N,1] string -> length (int32), upper (string), echo_bytes (string)."""
    import tensorflow as tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(text), "upper": tf.strings.upper(text), "echo_bytes": text}

    module = Strings()
    return _save(module, path, module.serve)


def _parse_x(inputs):
    import tensorflow as tf

    features = tf.io.parse_example(tf.reshape(inputs, [-1]), {"x": tf.io.FixedLenFeature([1], tf.float32)})
    return features["x"]


def classifier(path: Path) -> Path:
    """A classify-style signature: inputs (serialized tf.Examples with float x) -> classes, scores."""
    import tensorflow as tf

    class Classifier(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.string, name="inputs")])
        def serve(self, inputs):
            p = tf.sigmoid(_parse_x(inputs))
            classes = tf.tile(tf.constant([["pos", "neg"]]), [tf.shape(inputs)[0], 1])
            return {"classes": classes, "scores": tf.concat([p, 1 - p], axis=1)}

    module = Classifier()
    return _save(module, path, module.serve)


def regressor(path: Path) -> Path:
    """A regress-style signature: inputs (serialized tf.Examples with float x) -> outputs = 2x + 1."""
    import tensorflow as tf

    class Regressor(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.string, name="inputs")])
        def serve(self, inputs):
            return {"outputs": 2 * _parse_x(inputs) + 1}

    module = Regressor()
    return _save(module, path, module.serve)


def efficientnet_version(example_repo: Path, path: Path) -> Path:
    """The example SavedModel (NHWC 224x224x3 pixels 0..255 -> 1000 softmax) as a TF Serving version folder."""
    shutil.copytree(example_repo / "efficientnet_lite0_tf" / "1" / "model.savedmodel", path)
    return path


MODELS_CONF = """
model_config_list {
  config {
    name: 'effnet'
    base_path: 'effnet'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 2 }
  }
  config { name: 'effnet_latest' base_path: 'effnet_latest' model_platform: 'tensorflow' }
  config { name: 'strings' base_path: 'strings' }
  config { name: 'classifier' base_path: 'classifier' }
  config { name: 'regressor' base_path: 'regressor' }
}
"""


def tfserving_folder(example_repo: Path, root: Path) -> Path:
    """models.conf with effnet at versions 1 and 2 (specific, labels stable=1 and canary=2),
    effnet_latest on the default policy (latest 1, of versions 1 and 3) and three small models."""
    for version in (1, 2, 3):  # version 3 is on disk but not in effnet's specific policy
        (root / "effnet").mkdir(parents=True, exist_ok=True)
        efficientnet_version(example_repo, root / "effnet" / str(version))
    (root / "effnet_latest").mkdir()
    efficientnet_version(example_repo, root / "effnet_latest" / "1")
    efficientnet_version(example_repo, root / "effnet_latest" / "3")
    (root / "effnet_latest" / "not_a_version").mkdir()
    for name, make in (("strings", strings), ("classifier", classifier), ("regressor", regressor)):
        (root / name).mkdir()
        make(root / name / "1")
    conf = root / "models.conf"
    conf.write_text(MODELS_CONF)
    return conf
