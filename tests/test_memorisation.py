"""Reference models trained to the memorisation bar: a vanilla short of it tops up, the oracle trains as many epochs,
and a vanilla that cannot get there is one clear error (hf_unlearn/demo/memorisation.py)."""

import pytest
import torch

from hf_unlearn.data.synthetic import SyntheticBenchmarkConfig, benchmark_corpus, build_synthetic_benchmark
from hf_unlearn.demo.config import DemoTrainingConfig
from hf_unlearn.demo.memorisation import MemorisationBar, MemorisationError
from hf_unlearn.demo.references import memorisation_check, train_to_criterion
from hf_unlearn.testing import tiny_llama


@pytest.fixture(scope="module")
def text_rows():
    bench = build_synthetic_benchmark(SyntheticBenchmarkConfig(num_people=3, num_holdout_people=1, forget_ratio=0.34,
                                                               num_general=0))
    return bench, {"forget_qa": bench["forget_qa"], "retain_qa": bench["retain_qa"]}


def fresh(bench):
    return tiny_llama(seed=0, corpus=benchmark_corpus(bench))


def recipe(epochs: int, **bar) -> DemoTrainingConfig:
    return DemoTrainingConfig(num_train_epochs=epochs, learning_rate=3e-3, batch_size=4, warmup_steps=0,
                              memorisation=MemorisationBar(check_every_epochs=5, **bar))


def test_a_vanilla_short_of_the_bar_tops_up_and_the_oracle_trains_as_long(text_rows, tmp_path):
    bench, splits = text_rows
    short = recipe(6, top_up_learning_rate_scale=0.5)  # 6 epochs memorise little of 10 questions
    model, tok = fresh(bench)
    assert not memorisation_check(model, tok, splits, short.memorisation).passes(model)
    forget = {"forget_qa": splits["forget_qa"]}
    vanilla = train_to_criterion("vanilla", model, tok, bench["forget_qa"], forget, short, 0, str(tmp_path / "v"))
    assert vanilla > 6 and (vanilla - 6) % 5 == 0  # topped up, in whole check intervals
    check = memorisation_check(model, tok, forget, short.memorisation)
    assert check.passes(model)
    assert check.last["forget_qa"]["nll"] <= 0.05 and check.last["forget_qa"]["accuracy"] >= 0.98
    # The oracle trains the recipe and then the same top-up epochs (constant rate, same seed): given the vanilla's own
    # data it *is* the vanilla, bit for bit. (The demo gives it the vanilla's data minus the forget image questions.)
    oracle, _ = fresh(bench)
    epochs = train_to_criterion("oracle", oracle, tok, bench["forget_qa"], {}, short, 0, str(tmp_path / "o"),
                                vanilla_epochs=vanilla)
    assert epochs == vanilla
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in oracle.state_dict().items())


def test_a_vanilla_that_cannot_memorise_is_one_clear_error(text_rows, tmp_path):
    bench, splits = text_rows
    model, tok = fresh(bench)
    hopeless = DemoTrainingConfig(num_train_epochs=1, learning_rate=1e-6, batch_size=4, warmup_steps=0,
                                  memorisation=MemorisationBar(check_every_epochs=2, max_top_up_epochs=2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MemorisationError) as error:
        train_to_criterion("vanilla", model, tok, bench["forget_qa"], splits, hopeless, 7, str(tmp_path))
    message = str(error.value)
    assert "vanilla (seed 7)" in message and "1 epochs plus 2 top-up epochs" in message
    assert "forget_qa: nll" in message and "bar: accuracy >= 0.98" in message
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())  # it did train, and said so
