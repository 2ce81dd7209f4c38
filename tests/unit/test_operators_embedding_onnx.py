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


def _cost(groups, lengths, call_cost):
    return sum(call_cost + len(g) * max(lengths[i] for i in g) for g in groups)


def test_length_groups_split_a_mixed_batch_where_padding_costs_more_than_a_forward():
    prompts, answers = [18, 17, 19, 18], [31, 33, 30]
    lengths = [18, 31, 17, 33, 19, 30, 18]  # the service's batches mix prompts and answers
    groups = embedding_onnx.length_groups(lengths, call_cost_tokens=5)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row once
    assert [sorted(lengths[i] for i in g) for g in groups] == [sorted(prompts), sorted(answers)]
    assert _cost(groups, lengths, 5) < _cost([list(range(len(lengths)))], lengths, 5)
    assert embedding_onnx.length_groups([12] * 5) == [[0, 1, 2, 3, 4]]  # equal lengths: one forward
    assert embedding_onnx.length_groups([]) == []


def test_length_groups_respect_the_forward_size_and_the_call_cost():
    assert [len(g) for g in embedding_onnx.length_groups([9] * 5, max_rows=2)] == [1, 2, 2]
    lengths = [3, 40, 7, 25]
    assert len(embedding_onnx.length_groups(lengths, call_cost_tokens=1e9)) == 1  # the baseline: one forward
    assert len(embedding_onnx.length_groups(lengths, call_cost_tokens=0)) == 4  # free calls: no padding at all


def test_length_groups_are_the_cheapest_split_of_the_sorted_texts():
    """Against brute force over every split of the sorted order (2^(n-1) of them)."""
    import itertools
    import random

    rng = random.Random(5)
    for _ in range(200):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 8))]
        call_cost = rng.choice([0, 2, 5, 20])
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(
            _cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, call_cost)
            for k in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), k)
        )
        assert _cost(embedding_onnx.length_groups(lengths, call_cost), lengths, call_cost) == best


@pytest.mark.skipif(not embedding_onnx.is_exported(), reason="no int8 export (deploy/local/install.sh makes it)")
def test_grouped_forwards_give_each_text_its_own_vector():
    """Rows come back in the caller's order whichever forward they ran in: each text's vector is the one it
    gets alone, up to int8 activation scaling (which depends on the forward's rows: cosine > 0.97), and at
    least as close to it as in one padded forward; a swapped row would be < 0.8."""
    import numpy as np

    embedder = embedding_onnx.OnnxEmbedder(threads=1)
    texts = ["how do I pair my lamp", "ti esaelp pmal ym riap I od woh dna elttek ym nialpxe", "hi",
             "what should I know about the warranty claim for the kettle", "the night light blinks red"]
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    grouped = embedder.embed(texts)
    embedder.call_cost_tokens = 1e9
    padded = embedder.embed(texts)
    assert (np.sum(grouped * alone, axis=1) > 0.97).all()
    assert np.sum(grouped * alone) >= np.sum(padded * alone) - 1e-3
    assert np.sum(grouped[0] * alone[1]) < 0.8
