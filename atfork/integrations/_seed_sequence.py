"""numpy's ``SeedSequence`` hash, in pure Python, for seeding without numpy.

The ``random`` integration's derived mode seeds every generator of a child
from ``SeedSequence(root, spawn_key=key)``; the standard library's generators
must be seeded the same way whether numpy is installed or not. This module
computes exactly what ``numpy.random.SeedSequence(entropy,
spawn_key=key).generate_state(n)`` returns (the algorithm of
``numpy/random/bit_generator.pyx``, itself derived from Melissa O'Neill's
``seed_seq`` replacement; default pool size of 4 words), checked against
numpy by the tests.

A :class:`Pool` is the entropy pool after some of the input words have been
mixed in. Every spawn key word is mixed in after the root entropy, one word
at a time, so a process keeps the pool of its own spawn key and extends it by
one word per stream or per child: a few dozen integer operations, not a
hash of the whole key.
"""

from __future__ import annotations

__all__ = ["Pool", "words"]

_MASK32 = 0xFFFFFFFF
_POOL_SIZE = 4
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = 0xCA01F9DD
_MIX_MULT_R = 0x4973F715
_XSHIFT = 16


def words(value: int) -> list[int]:
    """``value`` as 32-bit words, lowest first; ``[0]`` for zero (numpy's
    ``_int_to_uint32_array``)."""
    if value < 0:
        raise ValueError(f"expected a non-negative integer, not {value}")
    if value == 0:
        return [0]
    out = []
    while value:
        out.append(value & _MASK32)
        value >>= 32
    return out


class Pool:
    """A ``SeedSequence`` entropy pool with a non-empty spawn key.

    ``Pool.root(entropy)`` mixes the root entropy in (padded to the pool
    size, as numpy does when a spawn key follows); :meth:`spawn` mixes in
    further spawn key elements. The spawn key must not stay empty: numpy
    pads the entropy only when there is one.
    """

    __slots__ = ("_hash_const", "_pool")

    def __init__(self, pool: list[int], hash_const: int) -> None:
        self._pool = pool
        self._hash_const = hash_const

    @classmethod
    def root(cls, entropy: int) -> Pool:
        run = words(entropy)
        run += [0] * (_POOL_SIZE - len(run))
        hash_const = _INIT_A
        pool = []
        for word in run[:_POOL_SIZE]:
            word ^= hash_const
            hash_const = (hash_const * _MULT_A) & _MASK32
            word = (word * hash_const) & _MASK32
            pool.append(word ^ (word >> _XSHIFT))
        # Mix all words together so that late bits affect earlier ones.
        for src in range(_POOL_SIZE):
            for dst in range(_POOL_SIZE):
                if src != dst:
                    value = pool[src] ^ hash_const
                    hash_const = (hash_const * _MULT_A) & _MASK32
                    value = (value * hash_const) & _MASK32
                    value ^= value >> _XSHIFT
                    mixed = (_MIX_MULT_L * pool[dst] - _MIX_MULT_R * value) & _MASK32
                    pool[dst] = mixed ^ (mixed >> _XSHIFT)
        return cls(pool, hash_const)._mixed(run[_POOL_SIZE:])

    def spawn(self, *key: int) -> Pool:
        """The pool with ``key`` appended to the spawn key."""
        return self._mixed([w for element in key for w in words(element)])

    def _mixed(self, entropy: list[int]) -> Pool:
        # Each word beyond the pool size is mixed with every pool word.
        pool = list(self._pool)
        hash_const = self._hash_const
        for word in entropy:
            for dst in range(_POOL_SIZE):
                value = word ^ hash_const
                hash_const = (hash_const * _MULT_A) & _MASK32
                value = (value * hash_const) & _MASK32
                value ^= value >> _XSHIFT
                mixed = (_MIX_MULT_L * pool[dst] - _MIX_MULT_R * value) & _MASK32
                pool[dst] = mixed ^ (mixed >> _XSHIFT)
        return Pool(pool, hash_const)

    def generate_state(self, n_words: int) -> list[int]:
        """``SeedSequence.generate_state(n_words)`` (32-bit words)."""
        hash_const = _INIT_B
        out = []
        for i in range(n_words):
            value = self._pool[i % _POOL_SIZE] ^ hash_const
            hash_const = (hash_const * _MULT_B) & _MASK32
            value = (value * hash_const) & _MASK32
            out.append(value ^ (value >> _XSHIFT))
        return out
