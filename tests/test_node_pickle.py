"""A class node defined in a script is shipped to Ray by value (cloudpickle, as Ray
ships ``__main__``): it must unpickle whole. Its attribute lookup forwards to the
class, and during unpickling, before its spec is set, that forwarding recursed
without end."""

from __future__ import annotations

import cloudpickle

import chains


def test_a_class_node_defined_in_a_function_round_trips_by_value() -> None:
    @chains.node(batch=chains.Batch(max_size=4, max_wait_ms=5))
    class Square:  # local: cloudpickle ships it by value, as a script's __main__ class
        @staticmethod
        def known_result(x: int) -> int | None:
            return -x if x < 0 else None

        def __call__(self, xs: list[int]) -> list[int]:
            return [x * x for x in xs]

    back = cloudpickle.loads(cloudpickle.dumps(Square))
    assert back.spec.name == "Square"
    assert back.known_result(-3) == 3 and back.known_result(2) is None
