"""No two processes share a random stream; seeded programs stay reproducible.

What breaks after fork without it
    A forked child starts with a copy of every pseudo-random generator of
    its parent, in the same state: unless something reseeds them, every
    child draws the same numbers as its siblings (numpy issue 9650, open
    since 2017: identical data augmentation in forked data-loader workers,
    identical Monte Carlo samples; PyTorch issue 5059). Identical streams
    are a security problem too when they make identifiers or tokens. And a
    numpy generator whose lock another thread held at the fork (it was
    drawing) keeps it held in the child, where that thread does not exist:
    the child's next draw hangs (numpy issue 9248).

What the standard library already does (CPython 3.9 - 3.13, the same on each)
    Since 3.7 (bpo-16500) ``random`` reseeds its global instance, the one
    behind ``random.random()``, from ``os.urandom`` in the child. That is
    all: a private ``random.Random(...)`` is not reseeded, and a program
    that called ``random.seed(42)`` gets children whose global draws cannot
    be reproduced. numpy reseeds nothing: its legacy global generator
    (``np.random.random()``), every ``Generator`` (``default_rng()``, seeded
    or not) and every ``RandomState`` give the same draws in every child.
    torch's default CPU generator likewise. ``secrets``, ``os.urandom``,
    ``uuid.uuid4`` and ``random.SystemRandom`` read the kernel's generator
    at each call and need nothing.

What this module does
    The generators it covers: the standard library's global instance,
    numpy's legacy global generator and torch's default CPU generator when
    the program has imported numpy or torch (looked up in ``sys.modules`` at
    fork time, never imported), every generator given to :func:`track`,
    and the ones it finds (see "Finding" below): every ``random.Random``
    (``SystemRandom`` needs nothing) and every numpy ``Generator``,
    ``RandomState`` and bit generator of numpy's own five types, made
    before or after :func:`enable`, numpy imported before or after it.

    prepare
        Registers the numpy generators made since the last scan, if any
        were (a scan of the garbage collector's youngest generation).
    prepare, parent (``mode="derived"`` only)
        prepare takes the index ``k`` of the child about to be made (the
        forks of a process are counted from 0); parent forgets it again.
    child
        First the lock of each covered numpy generator is re-created, so
        that a lock held by a thread of the parent no longer blocks. Then
        each covered generator is reseeded: with ``mode="fresh"`` from
        ``os.urandom`` (numpy's ``MT19937``, ``PCG64`` and ``PCG64DXSM``
        get their whole state from it, any other generator is seeded from
        128 bits of it; the global ``random`` instance is left to CPython,
        which reseeds it already); with ``mode="derived"`` from
        the root seed sequence, as described in :func:`enable`, the global
        ``random`` instance included. The parent's own generators are never
        touched.

The derived scheme
    The root is ``SeedSequence(root_seed())`` in numpy's sense. A process
    has a spawn key: ``()`` where :func:`enable` was called, and
    ``parent_key + (k,)`` in the ``k``-th child of a process. In a child,
    stream ``s`` is seeded from ``SeedSequence(root_seed(),
    spawn_key=spawn_key() + (s,))``, where ``s`` is 0 for the global
    ``random`` instance, 1 for numpy's legacy global generator, 2 for
    torch's default CPU generator and ``3 + i`` for the ``i``-th generator
    given to :func:`track` or found in the process or its ancestors. A
    ``random.Random`` is seeded with the integer made of
    ``generate_state(4)`` (32-bit words, lowest first); a numpy
    ``RandomState`` backed by ``MT19937`` with ``seed(generate_state(4))``;
    any other numpy bit generator gets the state of ``type(bit_generator)``
    constructed from that ``SeedSequence``; torch with the integer made of
    ``generate_state(2)``. The words are computed by a pure-Python copy of
    numpy's ``SeedSequence`` (checked against numpy by the tests), so
    programs without numpy are seeded the same way.

Finding
    :func:`enable` scans the heap once (``gc.get_objects()``) for the
    generators made before it. From then on ``random.Random`` has a
    ``__new__`` that registers each instance, weakly. numpy's types cannot
    be patched, but each bit generator's ``__init__`` makes its lock by
    calling ``numpy.random.bit_generator``'s module global ``RLock``
    (``Lock`` before numpy 2.3): it is replaced, as soon as numpy is seen in
    ``sys.modules`` (at enable(), at each collection, in prepare), by a
    function that makes the same lock and notes that bit generators were
    made. Only then is the garbage collector's youngest generation scanned,
    where those objects are: by a ``gc.callbacks`` entry before a collection
    moves them out of it, and in prepare. The free-threaded build has no
    generations: there the scan is in prepare only and covers the heap.
    Found numpy objects cannot be weakly referenced: they are held strongly
    and dropped once their reference count shows that nothing else holds
    them. :func:`disable` puts ``random.Random`` and numpy's global back.
    Not found: bit generators of other types (subclasses, third-party ones)
    and what is built on them; objects that ``gc.freeze()`` moved out of
    the collector's reach before a scan saw them.

Limits
    numpy before 2.3 uses a plain
    ``Lock``, whose holder cannot be known: one the forking thread itself
    holds across ``os.fork()`` is freed in the child too. torch's generator
    mutex is C++ and cannot be re-created or tried: had another thread been
    drawing from torch's CPU generator at the fork, reseeding it would wait
    forever, in every child, even one that never uses torch. So torch is
    reseeded only in the child of a process whose forking thread was its
    only thread (prepare counts them); otherwise the child keeps its
    parent's torch stream, and should seed torch itself.

.. versionadded:: 0.1
"""

from __future__ import annotations

import gc
import itertools
import operator
import os
import random
import sys
import threading
import weakref
from _thread import get_ident
from typing import Any, Callable

from atfork.integrations import PRIORITY_RANDOM
from atfork.integrations._seed_sequence import Pool
from atfork.integrations._toolkit import (
    FREE_THREADED,
    ForkStates,
    HookSlot,
    ref_or_strong,
    renew_locks,
)

__all__ = [
    "disable",
    "enable",
    "is_enabled",
    "root_seed",
    "spawn_key",
    "track",
    "untrack",
]

MODES = ("fresh", "derived")

# Stream numbers in the derived scheme (see the module docstring).
_STREAM_RANDOM = 0
_STREAM_NUMPY = 1
_STREAM_TORCH = 2
_FIRST_TRACKED_STREAM = 3

# How a tracked generator is reseeded.
_RANDOM = "random"  # random.Random: seed(int)
_RANDOM_STATE = "RandomState"  # numpy RandomState
_GENERATOR = "Generator"  # numpy Generator: its bit generator
_BIT_GENERATOR = "BitGenerator"  # numpy BitGenerator
_LEFT_ALONE = "left alone"  # given to untrack(): neither reseeded nor found again

_stdlib_seed = random.seed  # the global instance's seed, as CPython reseeds it

_mode: str | None = None
_hook = HookSlot()

# The derived mode's root entropy, this process's spawn key, the seed pool
# with that key mixed in, and the index of the next child.
_root: int | None = None
_key: tuple[int, ...] = ()
_pool: Pool | None = None
_children = itertools.count()
# The index of the child being forked, from prepare to parent or child.
_pending: ForkStates[int] = ForkStates()
# Whether the forking thread had company at the fork, while torch is
# imported (the parent keeps one entry per thread that forks: no parent
# callback is spent on removing it).
_not_alone: ForkStates[bool] = ForkStates()


class _Tracked:
    """A covered generator: its stream number, how to reseed it, the
    generator itself or a weak reference to it, and whether it was found
    (rather than given to :func:`track`)."""

    __slots__ = ("found", "get", "kind", "stream")

    def __init__(self, stream: int, kind: str, get: Callable[[], Any], found: bool) -> None:
        self.stream = stream
        self.kind = kind
        self.get = get
        self.found = found


# Covered generators by id(): tracked or found, numbered in that order (the
# stream number of the derived scheme, inherited by children). Registration
# may run from a gc callback, in any thread, amid another registration of
# the same thread: hence a reentrant lock, never taken at fork time.
_tracked: dict[int, _Tracked] = {}
_streams = itertools.count(_FIRST_TRACKED_STREAM)
_tracked_lock = threading.RLock()


def enable(*, mode: str = "fresh", seed: int | None = None) -> None:
    """Reseed the random generators in every forked child: the global ones,
    the tracked ones, and the ones found without :func:`track` (see
    "Finding" in the module documentation; the first call scans the heap
    once for those made before it).

    :param mode: ``"fresh"``: each child reseeds from ``os.urandom``.
        ``"derived"``: each child derives its seeds from a root seed and its
        place in the process tree (see the module documentation), so the
        same program run twice gives every child the same draws, while
        siblings, children and grandchildren all differ.
    :param seed: the root seed of ``mode="derived"``, a non-negative
        integer; by default 128 bits of ``os.urandom``, which
        :func:`root_seed` gives back to log and reuse.
    :raises ValueError: an unknown mode, a negative seed, or a seed with
        ``mode="fresh"``.
    :raises TypeError: a mode that is not a string or a seed that is not an
        integer.

    Calling it again with the options in force does nothing; with other
    options it replaces them (a derived mode then restarts from its new
    root, in this process). Nothing is imported: numpy and torch are
    looked up at fork time among the modules the program imported.

    .. versionadded:: 0.1
    """
    global _mode, _root, _key, _pool, _children
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, not {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'fresh' or 'derived', not {mode!r}")
    if seed is not None:
        if mode != "derived":
            raise ValueError("seed is only used with mode='derived'")
        if isinstance(seed, bool):
            raise TypeError("seed must be an int, not bool")
        try:
            seed = operator.index(seed)
        except TypeError:
            raise TypeError(f"seed must be an int, not {type(seed).__name__}") from None
        if seed < 0:
            raise ValueError(f"seed must be non-negative, not {seed}")
    if _mode == mode and (seed is None or seed == _root):
        return
    disable()
    _start_finding()
    if mode == "derived":
        _root = seed if seed is not None else int.from_bytes(os.urandom(16), "little")
        _key = ()
        _pool = Pool.root(_root)
        _children = itertools.count()
        _hook.register(
            _derived_prepare,
            _derived_parent,
            _derived_child,
            priority=PRIORITY_RANDOM,
            name="atfork.integrations.random (derived)",
        )
    else:
        _hook.register(
            prepare=_fresh_prepare,
            child=_fresh_child,
            priority=PRIORITY_RANDOM,
            name="atfork.integrations.random (fresh)",
        )
    _mode = mode


def disable() -> None:
    """Stop reseeding in forked children; calling it again does nothing.
    Tracked generators stay tracked.

    .. versionadded:: 0.1
    """
    global _mode, _root, _pool, _key
    _hook.release()
    _stop_finding()
    _mode = _root = _pool = None
    _key = ()
    _pending.clear()


def is_enabled() -> bool:
    """Whether forked children are reseeded.

    .. versionadded:: 0.1
    """
    return _mode is not None


def root_seed() -> int | None:
    """The root seed of ``mode="derived"``: the one given to :func:`enable`,
    or the entropy drawn for it (log it, and pass it as ``seed`` to run the
    same children again). The same in every descendant. None in
    ``mode="fresh"`` or when not enabled.

    .. versionadded:: 0.1
    """
    return _root


def spawn_key() -> tuple[int, ...]:
    """This process's place in the process tree of ``mode="derived"``:
    ``()`` in the process that called :func:`enable` (and when not in
    derived mode), its parent's key followed by ``k`` in the ``k``-th child
    (counted from 0) of a process.

    .. versionadded:: 0.1
    """
    return _key


def track(rng: Any) -> Any:
    """Reseed ``rng`` in every forked child too, and return it.

    :param rng: a :class:`random.Random` (``SystemRandom`` is accepted and
        needs nothing), or a numpy ``Generator``, ``RandomState`` or
        ``BitGenerator`` (``MT19937``, ``PCG64``, ``PCG64DXSM``,
        ``Philox``, ``SFC64``, or any bit generator that can be constructed
        from a ``SeedSequence``).
    :returns: ``rng`` itself: ``rng = track(np.random.default_rng())``.
    :raises TypeError: any other object.

    A ``random.Random`` is held by a weak reference: tracking ends when it
    is garbage. numpy's generators cannot be weakly referenced; they are
    held until :func:`untrack` is called with them. Tracking an object
    twice does nothing. Tracking works whether or not the integration is
    enabled.

    .. versionadded:: 0.1
    """
    entry = _tracked.get(id(rng))
    if entry is not None and entry.get() is rng and entry.kind != _LEFT_ALONE:
        entry.found = False  # held until untrack() from now on
        return rng
    _register(rng, _kind(rng), found=False)
    return rng


def _register(rng: Any, kind: str, found: bool) -> None:
    key = id(rng)
    with _tracked_lock:
        entry = _tracked.get(key)
        if entry is not None and entry.get() is rng and (found or entry.kind != _LEFT_ALONE):
            return
        # numpy's generators have no weak references: held until untrack(),
        # or, found ones, until _prune() sees that nothing else holds them
        ref = ref_or_strong(rng, lambda _: _tracked.pop(key, None))
        _tracked[key] = _Tracked(next(_streams), kind, ref, found)


def untrack(rng: Any) -> None:
    """Stop reseeding ``rng`` (and the bit generator a numpy ``Generator``
    or ``RandomState`` draws from) in forked children, whether it was given
    to :func:`track` or found by :func:`enable`; it is not found again.
    The reference to a numpy generator is kept no longer than to a found
    one. Calling it for any other object does nothing.

    .. versionadded:: 0.1
    """
    try:
        kind = _kind(rng, check=False)
    except TypeError:
        return
    objects = [rng]
    if kind == _GENERATOR:
        objects.append(rng.bit_generator)
    elif kind == _RANDOM_STATE:
        objects.append(rng._bit_generator)
    with _tracked_lock:
        for obj in objects:
            key = id(obj)
            ref = ref_or_strong(obj, lambda _, key=key: _tracked.pop(key, None))  # type: ignore[misc]
            _tracked[key] = _Tracked(-1, _LEFT_ALONE, ref, found=True)


def _kind(rng: Any, check: bool = True) -> str:
    if isinstance(rng, random.Random):
        return _RANDOM
    np_random = sys.modules.get("numpy.random")  # a numpy generator implies it is imported
    if np_random is not None:
        if isinstance(rng, np_random.Generator):
            if check:
                _check_bit_generator(np_random, rng.bit_generator)
            return _GENERATOR
        if isinstance(rng, np_random.RandomState):
            if check:
                _check_bit_generator(np_random, rng._bit_generator)
            return _RANDOM_STATE
        if isinstance(rng, np_random.BitGenerator):
            if check:
                _check_bit_generator(np_random, rng)
            return _BIT_GENERATOR
    raise TypeError(
        "track() takes a random.Random or a numpy Generator, RandomState or "
        f"BitGenerator, not {type(rng).__module__}.{type(rng).__qualname__}"
    )


def _check_bit_generator(np_random: Any, bit_generator: Any) -> None:
    """Fail at track() rather than at fork time for a bit generator that
    cannot be reseeded the way the child does it."""
    try:
        type(bit_generator)(np_random.SeedSequence(0)).state  # noqa: B018  (the check)
    except Exception as exc:  # whatever it is, the child could not reseed it either
        raise TypeError(
            f"cannot track a generator backed by {type(bit_generator).__qualname__}: it "
            f"cannot be constructed from a numpy SeedSequence ({exc})"
        ) from exc


# -- finding generators without track() ------------------------------------------
#
# random.Random: its class gets a __new__ that registers every instance as
# it is made (SystemRandom excepted), weakly. numpy's types are C types that
# cannot be patched, and every Generator and RandomState draws from a
# BitGenerator whose __init__ makes its lock by calling
# numpy.random.bit_generator's module global Lock (RLock from numpy 2.3):
# that global is replaced by a function that makes the same lock and notes
# that bit generators were made. The new objects are then in the garbage
# collector's youngest generation, which is scanned (only when something
# was noted) before each collection moves them out of it, and in prepare.
# The free-threaded build has no generations: there the scan is in prepare
# only, and covers the whole heap, still only after something was noted.
# Found numpy objects are held strongly and dropped once nothing else holds
# them (_prune). enable() scans the heap once for what existed before.

_RANDOM_BASE = random.Random.__mro__[1]  # _random.Random, the C type
# The numpy types found, by module and name, and how each is reseeded; a
# bit generator of another type (a subclass, a third-party one) is not.
_NUMPY_TYPES = (
    ("numpy.random._mt19937", "MT19937", _BIT_GENERATOR),
    ("numpy.random._pcg64", "PCG64", _BIT_GENERATOR),
    ("numpy.random._pcg64", "PCG64DXSM", _BIT_GENERATOR),
    ("numpy.random._philox", "Philox", _BIT_GENERATOR),
    ("numpy.random._sfc64", "SFC64", _BIT_GENERATOR),
    ("numpy.random.mtrand", "RandomState", _RANDOM_STATE),
)

_finding = False
# Whether numpy bit generators were made since the last scan.
_made = False
# numpy.random.bit_generator, the name of its lock global, the original.
_lock_global: tuple[Any, str, Any] | None = None
_numpy_watched = False  # whether _lock_global is set
# Found numpy objects held, and how many were alive at the last _prune().
_held = 0
_alive = 0


def _random_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    """random.Random.__new__ while enabled: the C type's, then registered."""
    rng = _RANDOM_BASE.__new__(cls, *args, **kwargs)
    if not isinstance(rng, random.SystemRandom):  # reads the kernel: nothing to reseed
        _register(rng, _RANDOM, found=True)
    return rng


_random_new_method = staticmethod(_random_new)


def _start_finding() -> None:
    global _finding
    if _finding:
        return
    _finding = True
    random.Random.__new__ = _random_new_method  # type: ignore[assignment]
    if not FREE_THREADED:
        gc.callbacks.append(_before_collection)
    _watch_numpy()
    _scan(gc.get_objects(), everything=True)


def _stop_finding() -> None:
    global _finding, _lock_global, _numpy_watched
    if not _finding:
        return
    _finding = False
    if vars(random.Random).get("__new__") is _random_new_method:
        del random.Random.__new__
    if _before_collection in gc.callbacks:
        gc.callbacks.remove(_before_collection)
    if _lock_global is not None:
        module, name, original = _lock_global
        if getattr(module, name, None) is not original:
            setattr(module, name, original)
        _lock_global = None
        _numpy_watched = False


def _watch_numpy() -> bool:
    """Replace numpy's lock global, once numpy.random is imported (now or
    since the last call); True if it was just replaced."""
    global _lock_global, _numpy_watched
    module = sys.modules.get("numpy.random.bit_generator")
    if module is None:
        return False
    if _lock_global is not None:
        # numpy's module body, still running, may assign it again
        module, name, _ = _lock_global
        return _replace_lock(module, name)
    for name in ("RLock", "Lock"):
        original = getattr(module, name, None)
        if original is not None:
            _lock_global = (module, name, original)
            _numpy_watched = True
            return _replace_lock(module, name)
    return False  # the module is still being initialised


def _replace_lock(module: Any, name: str) -> bool:
    global _made
    assert _lock_global is not None
    original = _lock_global[2]
    current = getattr(module, name, None)
    if getattr(current, "__wrapped__", None) is original:
        return False

    def make_lock() -> Any:
        global _made
        _made = True
        return original()

    make_lock.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(module, name, make_lock)
    _made = True  # bit generators made before it was replaced: scan once
    return True


def _before_collection(phase: str, info: dict[str, int]) -> None:
    """gc callback: scan the youngest generation before it is collected,
    if numpy bit generators were made meanwhile."""
    if phase == "start" and (_watch_numpy() or _made):
        _scan(gc.get_objects(generation=0))


def _find_new() -> None:
    """In prepare: what was made since the last scan. Once numpy's global is
    replaced, only a flag is read: every page prepare writes to (a reference
    count is a write) costs the parent a page fault at each fork."""
    if _made or (not _numpy_watched and _finding and _watch_numpy()):
        _scan(gc.get_objects(generation=0))


def _scan(objects: list[Any], everything: bool = False) -> None:
    """Register the generators among ``objects``; with ``everything``, the
    random.Random instances too (made before enable())."""
    global _made, _held
    _made = False
    kinds: dict[type, str | None] = {}
    for module, name, kind in _NUMPY_TYPES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            kinds[cls] = kind
    if not kinds and not everything:
        return
    legacy = getattr(sys.modules.get("numpy.random.mtrand"), "_rand", None)
    # the global instances have streams of their own
    excluded = {id(random._inst), id(legacy), id(getattr(legacy, "_bit_generator", None))}
    found: list[tuple[Any, str]] = []
    for obj in objects:
        cls = type(obj)
        known = kinds.get(cls, "")
        if known == "":
            known = kinds[cls] = (
                _RANDOM
                if everything
                and issubclass(cls, random.Random)
                and not issubclass(cls, random.SystemRandom)
                else None
            )
        if known is not None and id(obj) not in excluded:
            found.append((obj, known))
    del objects
    for obj, kind in found:
        if kind == _RANDOM_STATE and type(obj._bit_generator) not in kinds:
            continue  # a RandomState on a bit generator that cannot be reseeded
        if id(obj) not in _tracked:
            _register(obj, kind, found=True)
            _held += kind != _RANDOM
    if _held > 2 * _alive + 64:
        _prune()


def _refs(entry: _Tracked) -> int:
    return sys.getrefcount(entry.get())


def _strong(entry: _Tracked) -> bool:
    return not isinstance(entry.get, weakref.ref)


def _garbage(entry: _Tracked) -> bool:
    """A found numpy object that only its entry holds."""
    return entry.found and _strong(entry) and _refs(entry) <= _ALONE


# The count _refs() gives for an object that only its _Tracked entry holds.
_ALONE = _refs(_Tracked(0, _BIT_GENERATOR, ref_or_strong(object(), lambda _: None), True))


def _prune() -> None:
    """Drop the found numpy objects that nothing else holds any more."""
    global _held, _alive
    with _tracked_lock:
        for key, entry in list(_tracked.items()):
            if _garbage(entry):
                del _tracked[key]
        _held = _alive = sum(1 for e in _tracked.values() if e.found and _strong(e))


# prepare / parent (mode="derived")


def _derived_prepare() -> None:
    _pending[get_ident()] = next(_children)
    _fresh_prepare()


def _fresh_prepare() -> None:
    _find_new()
    _count_threads()


def _count_threads() -> None:
    """Note whether the forking thread is alone: only then can the child
    reseed torch (see "Limits" above). Counted only if torch is imported."""
    if "torch" in sys.modules:
        _not_alone[get_ident()] = len(threading._active) > 1  # type: ignore[attr-defined]


def _derived_parent() -> None:
    _pending.pop(get_ident(), None)


# child


def _fresh_child() -> None:
    # 128 bits of fresh entropy per generator, read at once, for those not
    # given a whole state by _fresh_state(); the global random instance
    # was reseeded by CPython already.
    tracked = list(_tracked.copy().values())
    entropy = os.urandom(16 * (2 + len(tracked)))
    index = itertools.count()

    def words(_: int) -> list[int]:
        start = 16 * next(index)
        chunk = entropy[start : start + 16]
        return [int.from_bytes(chunk[i : i + 4], "little") for i in range(0, 16, 4)]

    def new_state(np_random: Any, bit_generator: Any, stream: int) -> Any:
        return (
            _fresh_state(np_random, bit_generator)
            or type(bit_generator)(np_random.SeedSequence(_integer(words(stream)))).state
        )

    _reseed(tracked, words, new_state)


# The numpy bit generators whose state mode="fresh" fills from os.urandom
# directly, set through their ``state`` property: the child then runs none
# of numpy's seeding code (array conversions, ufuncs, a new bit generator),
# which it would be the first to run after the fork, a page fault for each
# page of it (about 100 for each of MT19937 and PCG64). The state is as
# random as a seeded one: MT19937 gets its whole key (never all zero, as
# numpy's init_by_array makes sure), PCG64 and PCG64DXSM a state and an odd
# increment of 128 bits each.
_MT19937_WORDS = 624
_PCG_TYPES = frozenset({"PCG64", "PCG64DXSM"})


def _fresh_state(np_random: Any, bit_generator: Any) -> dict[str, Any] | None:
    """A state for ``bit_generator`` from ``os.urandom``, or None for a type
    without one here (seeded from a SeedSequence then)."""
    kind = type(bit_generator)
    if kind is np_random.MT19937:
        key = memoryview(bytearray(os.urandom(4 * _MT19937_WORDS))).cast("I")
        key[0] |= 0x80000000
        return {"bit_generator": "MT19937", "state": {"key": key, "pos": _MT19937_WORDS}}
    name = kind.__name__
    if name in _PCG_TYPES and kind is getattr(np_random, name, None):
        value = int.from_bytes(os.urandom(32), "little")
        return {
            "bit_generator": name,
            "state": {"state": value >> 128, "inc": value & ((1 << 128) - 1) | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
    return None


def _derived_child() -> None:
    global _key, _pool, _children
    index = _pending.take_in_child()
    if index is None:
        # No prepare phase ran (atfork.check() after a fork that bypassed
        # Python's hooks): this child's place is unknown; a random one keeps
        # it and its descendants apart from every other process.
        index = int.from_bytes(os.urandom(8), "little")
    assert _pool is not None
    assert _root is not None
    _key += (index,)
    pool = _pool = _pool.spawn(index)
    _children = itertools.count()
    root, key = _root, _key

    def words(stream: int) -> list[int]:
        return pool.spawn(stream).generate_state(4)

    def new_state(np_random: Any, bit_generator: Any, stream: int) -> Any:
        return type(bit_generator)(np_random.SeedSequence(root, spawn_key=(*key, stream))).state

    _stdlib_seed(_integer(words(_STREAM_RANDOM)))
    _reseed(list(_tracked.copy().values()), words, new_state)


def _reseed(
    tracked: list[_Tracked],
    words: Callable[[int], list[int]],
    new_state: Callable[[Any, Any, int], Any],
) -> None:
    """Reseed numpy's and torch's global generators and the tracked ones;
    ``words(stream)`` gives four 32-bit words of seed,
    ``new_state(numpy.random, bit_generator, stream)`` a new ``state`` for a
    numpy bit generator."""
    global _tracked_lock
    # Another thread of the parent may have held it at the fork.
    _tracked_lock = threading.RLock()
    np_random = sys.modules.get("numpy.random")
    mtrand = sys.modules.get("numpy.random.mtrand")
    legacy = getattr(mtrand, "_rand", None)
    if legacy is not None:
        _reseed_random_state(np_random, legacy, words, new_state, _STREAM_NUMPY)
    generator = getattr(sys.modules.get("torch"), "default_generator", None)
    not_alone = _not_alone.take_in_child(True)
    if generator is not None and not not_alone:
        seed_words = words(_STREAM_TORCH)
        generator.manual_seed(seed_words[0] | seed_words[1] << 32)
    # Reseeded through the RandomState or Generator that owns it, once.
    owned = {id(getattr(legacy, "_bit_generator", None))}
    for entry in tracked:
        if entry.kind in (_RANDOM_STATE, _GENERATOR):
            rng = entry.get()
            if rng is not None:
                owned.add(
                    id(rng._bit_generator if entry.kind == _RANDOM_STATE else rng.bit_generator)
                )
    for entry in tracked:
        if entry.kind == _LEFT_ALONE or _garbage(entry):
            continue
        rng = entry.get()
        if rng is None or (entry.kind == _BIT_GENERATOR and id(rng) in owned):
            continue
        if entry.kind == _RANDOM:
            rng.seed(_integer(words(entry.stream)))
        elif entry.kind == _RANDOM_STATE:
            _reseed_random_state(np_random, rng, words, new_state, entry.stream)
        else:
            bit_generator = rng.bit_generator if entry.kind == _GENERATOR else rng
            renew_locks((bit_generator.lock,))
            bit_generator.state = new_state(np_random, bit_generator, entry.stream)


def _reseed_random_state(
    np_random: Any,
    state: Any,
    words: Callable[[int], list[int]],
    new_state: Callable[[Any, Any, int], Any],
    stream: int,
) -> None:
    bit_generator = state._bit_generator
    renew_locks((bit_generator.lock,))
    # Both take the lock just re-created, which nothing else can hold here,
    # and both drop the cached second normal of the Box-Muller pair, which
    # would otherwise be every child's first standard_normal().
    if _mode == "derived" and type(bit_generator) is np_random.MT19937:
        state.seed(words(stream))  # init_by_array: far cheaper than MT19937(SeedSequence)
    else:
        state.set_state(new_state(np_random, bit_generator, stream))


def _integer(words: list[int]) -> int:
    value = 0
    for i, word in enumerate(words):
        value |= word << (32 * i)
    return value
