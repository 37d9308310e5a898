"""The real-photo benchmark of `hf-unlearn demo --real` and the slow tier: fictitious characters on skimage photos."""

import numpy as np
import pytest

pytest.importorskip("skimage")

from hf_unlearn.data.real_photos import (  # noqa: E402
    REAL_PHOTO_SPLITS,
    RealPhotoBenchmarkConfig,
    build_real_photo_benchmark,
    oracle_rows,
    vanilla_rows,
)
from hf_unlearn.data.schema import check_mcq_row  # noqa: E402
from hf_unlearn.demo.real import RealDemoConfig  # noqa: E402


def test_splits_are_consistent_and_deterministic():
    config = RealPhotoBenchmarkConfig(num_people=6, num_forget=2, num_holdout_people=2, attributes=("job",))
    bench = build_real_photo_benchmark(config)
    assert list(bench) == list(REAL_PHOTO_SPLITS)
    sizes = {k: len(v) for k, v in bench.items()}
    assert sizes == {"forget_vqa": 4, "forget_qa": 2, "retain_vqa": 8, "retain_qa": 4, "test_vqa": 4,
                     "holdout_vqa": 4, "holdout_qa": 2, "general": 2}
    for split, ds in bench.items():
        for i, row in enumerate(ds):
            check_mcq_row(row, f"{split}[{i}]")
    forget_people = set(bench["forget_vqa"]["person_id"])
    assert forget_people == set(bench["forget_qa"]["person_id"]) == set(bench["test_vqa"]["person_id"])
    assert not forget_people & set(bench["retain_vqa"]["person_id"])
    names = set(bench["forget_vqa"]["answer"][::2]) | set(bench["retain_vqa"]["answer"][::2])
    assert not any(name in q for name in names for q in bench["forget_vqa"]["question"])  # images must tell who
    # Real photos, 56 px RGB; the test split shows a transformed version of the same photo.
    forget = np.asarray(bench["forget_vqa"][0]["image"], dtype=np.float32)
    test = np.asarray(bench["test_vqa"][0]["image"], dtype=np.float32)
    assert forget.shape == test.shape == (56, 56, 3) and forget.std() > 10
    assert 0 < np.abs(forget - test).mean() < 80
    again = build_real_photo_benchmark(config)
    assert again["test_vqa"][0]["image"].tobytes() == bench["test_vqa"][0]["image"].tobytes()
    assert again["forget_vqa"]["answer"] == bench["forget_vqa"]["answer"]
    assert len(vanilla_rows(bench)) == 4 + 8 + 2 + 4 + 2 and len(oracle_rows(bench)) == 8 + 2 + 4 + 2


def test_config_errors_and_cache_key():
    with pytest.raises(ValueError, match="one real photo each"):
        RealPhotoBenchmarkConfig(num_people=17, num_holdout_people=2)
    with pytest.raises(ValueError, match="num_forget"):
        RealPhotoBenchmarkConfig(num_people=3, num_forget=3)
    a, b = RealDemoConfig.quick(), RealDemoConfig.quick()
    assert a.cache_key() == b.cache_key()
    assert RealDemoConfig.quick(seed=1).cache_key() != a.cache_key()
    assert RealDemoConfig(method_steps=3).cache_key() == RealDemoConfig(method_steps=9).cache_key()  # not a weight
