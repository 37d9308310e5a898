"""Seeded forget/retain pairing."""

import pytest

from hf_unlearn import ForgetRetainDataset


def test_pairing_is_deterministic_and_rotates_with_epochs():
    forget = [{"f": i} for i in range(3)]
    retain = [{"r": i} for i in range(9)]
    a, b = ForgetRetainDataset(forget, retain, seed=7), ForgetRetainDataset(forget, retain, seed=7)
    assert [a[i] for i in range(3)] == [b[i] for i in range(3)]
    assert len(a) == 3
    seen = set()
    for epoch in range(12):
        a.set_epoch(epoch)
        seen |= {a[i]["retain"]["r"] for i in range(3)}
    assert seen == set(range(9))  # every retain row gets used over epochs
    c = ForgetRetainDataset(forget, retain, seed=8)
    assert [c[i]["retain"] for i in range(3)] != [ForgetRetainDataset(forget, retain, seed=7)[i]["retain"]
                                                  for i in range(3)]


def test_retain_anchor():
    forget = [{"f": i} for i in range(2)]
    retain = [{"r": i} for i in range(5)]
    d = ForgetRetainDataset(forget, retain, anchor="retain")
    assert len(d) == 5
    assert [d[i]["retain"]["r"] for i in range(5)] == list(range(5))
    assert sorted({d[i]["forget"]["f"] for i in range(5)}) == [0, 1]  # forget rows cycled
    with pytest.raises(ValueError, match="anchor"):
        ForgetRetainDataset(forget, None, anchor="retain")
