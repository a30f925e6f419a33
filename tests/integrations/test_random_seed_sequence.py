"""numpy's SeedSequence in pure Python (atfork.integrations._seed_sequence)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atfork.integrations._seed_sequence import Pool, words

np = pytest.importorskip("numpy", reason="numpy is a test dependency (pip install .[test])")

entropies = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1), st.integers(0, 2**300))
keys = st.lists(st.integers(0, 2**70), min_size=1, max_size=6)


@given(entropy=entropies, key=keys, n_words=st.integers(1, 12), split=st.integers(0, 6))
def test_same_state_as_numpy(entropy: int, key: list[int], n_words: int, split: int) -> None:
    """The generated words equal numpy's for any entropy and spawn key, however
    the key is spawned (all at once or element by element)."""
    expected = np.random.SeedSequence(entropy, spawn_key=key).generate_state(n_words)
    pool = Pool.root(entropy)
    if split:
        pool = pool.spawn(*key[:split])
    if key[split:]:
        pool = pool.spawn(*key[split:])
    assert [int(w) for w in expected] == pool.generate_state(n_words)


def test_words_are_numpys() -> None:
    """Integers split into 32-bit words, lowest first; zero is one word."""
    assert [0] == words(0)
    assert [1, 1] == words(2**32 + 1)
    with pytest.raises(ValueError, match="non-negative"):
        words(-1)
