"""Processing stages, one module each, and their registry (see :mod:`radflow.stages.base`).

``registered()`` gives every stage in run order: the built-ins below, stages that other
packages name under the ``radflow.stages`` entry-point group, and stages registered at run time.
"""

from radflow.stages.base import Job, Range, Request, Stage, completed, register, registered, run_range

from radflow.stages import preprocess, infer, features, reconstruct, volumes  # noqa: E402,F401  (they register)

__all__ = ["Job", "Range", "Request", "Stage", "completed", "register", "registered", "run_range"]
