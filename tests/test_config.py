"""Bad configuration values fail before any work, saying what is allowed."""
import pytest
from conftest import tiny_vit

import sparse_tuning as st


@pytest.mark.parametrize("field,value,message", [
    ("keep_rate", 0, r"keep_rate=0: expected a number in \(0, 1\]"),
    ("keep_rate", 1.5, "keep_rate"), ("keep_rate", -0.2, "keep_rate"), ("keep_rate", True, "keep_rate"),
    ("sparsify_at", (-1,), "non-negative"), ("sparsify_at", (3, 3), "distinct"),
    ("bottleneck", 0, "bottleneck=0: expected an integer >= 1"), ("bottleneck", 2.5, "bottleneck"),
    ("dense_inputs", (0,), "dense_inputs"), ("dense_inputs", (1, 1), "distinct"),
    ("fusion", "concat", "fusion='concat': expected one of down-sum, input-sum, up-sum"),
    ("merge", "avg", "merge='avg': expected one of mean, sum, drop"),
    ("adapters", "yes", "adapters"), ("scale", float("nan"), "scale"),
])
def test_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        st.SparseTuningConfig(**{field: value})


def test_block_index_out_of_range_is_refused_at_apply():
    model = tiny_vit()
    with pytest.raises(ValueError, match=r"block 12 does not exist; this model has blocks 0..11"):
        st.apply(model, st.SparseTuningConfig(sparsify_at=(3, 12)))
    assert not hasattr(model, "sparse_tuning")


def test_runtime_keep_rate_is_validated():
    model = st.apply(tiny_vit())
    with pytest.raises(ValueError, match="keep_rate"):
        model.sparse_tuning.keep_rate = 0.0
    assert model.sparse_tuning.keep_rate == 0.7


def test_round_trip_through_dict():
    cfg = st.SparseTuningConfig(sparsify_at=[2, 5], dense_inputs=[1], merge="sum")
    assert st.SparseTuningConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown Sparse-Tuning config field"):
        st.SparseTuningConfig.from_dict({"keeprate": 0.5})


def test_each_model_owns_its_config():
    cfg = st.SparseTuningConfig()
    a, b = st.apply(tiny_vit(), cfg), st.apply(tiny_vit(), cfg)
    a.sparse_tuning.keep_rate = 0.5
    assert b.sparse_tuning.keep_rate == 0.7 and cfg.keep_rate == 0.7
