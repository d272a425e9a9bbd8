"""Sharing identical quantization vectors shrinks a per-channel INT8 TFLite file
without changing a single output bit; float files are left as they are."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def per_channel_int8_tflite() -> bytes:
    """A small conv net quantized by the TF converter exactly as ``convert`` does (per-channel, int8 IO)."""
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
    return conv.convert()


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


def test_shared_quantization_vectors_shrink_int8_file_with_identical_outputs(per_channel_int8_tflite):
    from edgecxr.convert.tflite_compact import share_quantization_vectors

    shared, saved = share_quantization_vectors(per_channel_int8_tflite)
    assert saved > 0 and len(shared) == len(per_channel_int8_tflite) - saved
    # three per-channel 64-wide layers: weight and bias zero points are 6 identical 512-byte vectors
    assert saved >= 5 * 64 * 8
    x = np.random.default_rng(1).integers(-128, 128, size=(16, 24, 24, 3), dtype=np.int8)
    np.testing.assert_array_equal(_outputs(shared, x), _outputs(per_channel_int8_tflite, x))
    assert share_quantization_vectors(shared) == (shared, 0)  # nothing left to share


def test_float_tflite_files_are_left_unchanged():
    from edgecxr.convert.tflite_compact import share_quantization_vectors

    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3), tf.keras.layers.Flatten()])
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    assert share_quantization_vectors(blob) == (blob, 0)
