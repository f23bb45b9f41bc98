"""radflow's flows: Prefect flows whose parameters, plain JSON values already, are recorded as they are.

Prefect records a flow run's parameters through FastAPI's ``jsonable_encoder``, importing FastAPI (and
Starlette) in the command's process the first time a flow runs: 0.16 s on a quiet machine, up to 0.4 s
while the cluster's workers import beside it, on the way to the flow run's start. radflow's flow
parameters are strings, numbers, booleans, ``None``, and lists, tuples and string-keyed dicts of
them; those are recorded as the encoder would record them (tuples as lists), without it. Any other
value goes to Prefect's own encoder, as before.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect.flows import Flow

__all__ = ["flow", "RadflowFlow", "plain_json"]

_SCALARS = (str, int, float, bool, type(None))


def plain_json(value: Any) -> Any:
    """``value`` as JSON data (tuples as lists) when it is made of JSON's own types only; raises
    ``TypeError`` otherwise."""
    kind = type(value)  # exact types: a subclass (an enum, a NumPy float) is Prefect's encoder's to record
    if kind in _SCALARS:
        return value
    if kind in (list, tuple):
        return [plain_json(v) for v in value]
    if kind is dict and all(type(k) is str for k in value):
        return {k: plain_json(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


class RadflowFlow(Flow):
    """A Prefect flow whose plain parameters are recorded without importing FastAPI."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if self.ismethod or self.isclassmethod:  # Prefect's own leaves the bound object out
            return super().serialize_parameters(parameters)
        try:
            return {k: plain_json(v) for k, v in parameters.items()}
        except (TypeError, RecursionError):
            return super().serialize_parameters(parameters)


def flow(**options: Any) -> Callable[[Callable[..., Any]], RadflowFlow]:
    """``prefect.flow(**options)``, making a :class:`RadflowFlow`."""

    def make(fn: Callable[..., Any]) -> RadflowFlow:
        return RadflowFlow(fn=fn, **options)

    return make
