"""`run_training` leaves the objects alive before the first run (the imported modules) out of later garbage
collections, so that the Trainer's full collection per run stops walking them (bench/smoke_cells.py measures the
time); what is garbage before, and what is made after, is still collected."""

import gc
import weakref

from rmlora.harness.run import freeze_long_lived_objects


class Node:
    pass


def _cyclic_garbage() -> weakref.ref:
    node = Node()
    node.me = node  # a reference cycle: only the cyclic collector frees it
    return weakref.ref(node)


def test_freezing_collects_first_and_leaves_later_garbage_collectable():
    gc.unfreeze()  # as in a fresh process (an earlier test may have run a training)
    gc.disable()  # no automatic collection may free the cycles by chance
    try:
        before = _cyclic_garbage()
        assert before() is not None
        imported = len(gc.get_objects())
        freeze_long_lived_objects()
        assert before() is None  # garbage from before the freeze is freed, not frozen for good
        assert gc.get_freeze_count() > imported // 2  # the long-lived objects are out of the collections
        assert len(gc.get_objects()) < imported // 2
        after = _cyclic_garbage()
        gc.collect()
        assert after() is None  # what a run makes (models, Trainers) is collected as before
        count = gc.get_freeze_count()
        freeze_long_lived_objects()
        assert gc.get_freeze_count() == count  # once per process
    finally:
        gc.enable()
