"""refdiff._cache.IdentityCache: results per (object, key), never another object's."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from refdiff._cache import IdentityCache
from refdiff.samplers import discrete
from refdiff.schedules import linear


class _Obj:
    pass


def test_builds_once_per_object_and_key():
    cache, calls = IdentityCache(8), []
    a, b = _Obj(), _Obj()

    def build(tag):
        return lambda: calls.append(tag) or tag

    assert cache.get(a, "k", build("a-k")) == "a-k"
    assert cache.get(a, "k", build("again")) == "a-k"
    assert cache.get(a, "j", build("a-j")) == "a-j"
    assert cache.get(b, "k", build("b-k")) == "b-k"
    assert calls == ["a-k", "a-j", "b-k"]


def test_a_recycled_id_does_not_return_a_dead_objects_result():
    cache = IdentityCache(8)
    a = _Obj()
    cache.get(a, "k", lambda: "a")
    dead = weakref.ref(a)
    del a
    gc.collect()
    assert dead() is None
    b = _Obj()
    # b takes the dead object's slot, as if CPython had recycled its id
    ((_, key), (_, value)) = next(iter(cache._entries.items()))
    cache._entries[(id(b), key)] = (dead, value)
    assert cache.get(b, "k", lambda: "b") == "b"


def test_keeps_the_last_size_entries():
    cache, objs = IdentityCache(2), [_Obj() for _ in range(3)]
    for i, o in enumerate(objs):
        cache.get(o, "k", lambda i=i: i)
    assert cache.get(objs[0], "k", lambda: "rebuilt") == "rebuilt"  # evicted
    assert cache.get(objs[2], "k", lambda: "rebuilt") == 2


def test_the_ddpm_plan_is_built_once_per_schedule_and_options():
    s = linear(20)
    x = np.zeros((1, 2))
    z = np.zeros((20, 1, 2))
    discrete._PLANS.clear()
    discrete.sample_ddpm(lambda x, t: x, x, schedule=s, noise=z)
    key = ("ddpm", "fixed_small", "clipped", "none", "eps")
    plan = discrete._PLANS.get(s, key, lambda: None)
    assert plan is not None and len(plan) == 20
    discrete.sample_ddpm(lambda x, t: x, x, schedule=s, noise=z)
    assert discrete._PLANS.get(s, key, lambda: None) is plan
    discrete.sample_ddpm(lambda x, t: x, x, schedule=s, noise=z, var_type="fixed_large")
    large = discrete._PLANS.get(s, key[:1] + ("fixed_large",) + key[2:], lambda: None)
    assert large is not None and large is not plan
