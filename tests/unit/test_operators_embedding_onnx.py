"""The int8 export's options and the embeddings bench's backend names (no model is loaded here)."""

import pytest

from operators import embedding_onnx
from tools.embed_quality import backends


def test_fewer_layers_export_to_their_own_directory():
    assert embedding_onnx.export_dir() == embedding_onnx.export_dir(embedding_onnx.LAYERS)
    assert embedding_onnx.export_dir(4) != embedding_onnx.export_dir()
    assert embedding_onnx.export_dir(4).name.endswith("-layers4")


@pytest.mark.parametrize("layers", [0, 7, -1])
def test_layers_outside_the_model_are_refused(layers, tmp_path):
    with pytest.raises(ValueError, match="layers"):
        embedding_onnx.export(tmp_path, layers=layers)


@pytest.mark.parametrize("name", ["onnx-int8-L", "onnx-int8-Lx", "onnx", "minilm"])
def test_unknown_backends_are_refused(name):
    with pytest.raises(ValueError, match="unknown backend"):
        list(backends([name]))
