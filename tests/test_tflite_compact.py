"""Sharing identical quantization vectors shrinks a per-channel INT8 TFLite file
without changing a single output bit; float files are left as they are."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# The TFLite files are made in a child process, as `convert` does: with TensorFlow
# loaded, importing torch's triton later in the same process segfaults.
_MAKE_MODELS = """
import sys
import numpy as np
import tensorflow as tf

tf.keras.utils.set_random_seed(0)
model = tf.keras.Sequential([
    tf.keras.Input((24, 24, 3)),
    tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
    tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
    tf.keras.layers.Conv2D(64, 1, activation="relu"),
    tf.keras.layers.GlobalAveragePooling2D(),
    tf.keras.layers.Dense(3),
])
rng = np.random.default_rng(0)
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.representative_dataset = lambda: ([rng.normal(size=(1, 24, 24, 3)).astype(np.float32)] for _ in range(8))
conv.inference_input_type = conv.inference_output_type = tf.int8
open(sys.argv[1] + "/int8.tflite", "wb").write(conv.convert())
small = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3), tf.keras.layers.Flatten()])
open(sys.argv[1] + "/fp32.tflite", "wb").write(tf.lite.TFLiteConverter.from_keras_model(small).convert())
"""


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory) -> Path:
    """A per-channel INT8 conv net quantized by the TF converter exactly as ``convert`` does
    (int8 IO), and a small float model."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow not installed")
    out = tmp_path_factory.mktemp("tflite")
    proc = subprocess.run([sys.executable, "-c", _MAKE_MODELS, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _outputs(blob: bytes, inputs: np.ndarray) -> np.ndarray:
    from edgecxr.device.backends import import_interpreter

    Interpreter, _ = import_interpreter()
    interp = Interpreter(model_content=blob, num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for x in inputs:
        interp.set_tensor(i["index"], x[None])
        interp.invoke()
        outs.append(interp.get_tensor(o["index"]).copy())
    return np.concatenate(outs)


def test_shared_quantization_vectors_shrink_int8_file_with_identical_outputs(tflite_models):
    from edgecxr.convert.formats.tflite.compact import share_quantization_vectors

    per_channel_int8_tflite = (tflite_models / "int8.tflite").read_bytes()
    shared, saved = share_quantization_vectors(per_channel_int8_tflite)
    assert saved > 0 and len(shared) == len(per_channel_int8_tflite) - saved
    # three per-channel 64-wide layers: weight and bias zero points are 6 identical 512-byte vectors
    assert saved >= 5 * 64 * 8
    x = np.random.default_rng(1).integers(-128, 128, size=(16, 24, 24, 3), dtype=np.int8)
    np.testing.assert_array_equal(_outputs(shared, x), _outputs(per_channel_int8_tflite, x))
    assert share_quantization_vectors(shared) == (shared, 0)  # nothing left to share


def test_float_tflite_files_are_left_unchanged(tflite_models):
    from edgecxr.convert.formats.tflite.compact import share_quantization_vectors

    blob = (tflite_models / "fp32.tflite").read_bytes()
    assert share_quantization_vectors(blob) == (blob, 0)
