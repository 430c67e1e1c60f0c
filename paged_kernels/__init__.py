"""Production Triton kernels for unified paged attention.

``unified_attention`` is the entry point (2D kernel, 3D split-KV kernel and segment reduction
behind one dispatcher). Never imports ``reference``.
"""

from .api import interpreting, make_plan, unified_attention
from .plan import LaunchPlan, plan_launch
from .validate import check_arguments, validate_metadata
from .workspace import Workspace

__all__ = [
    "LaunchPlan",
    "Workspace",
    "check_arguments",
    "interpreting",
    "make_plan",
    "plan_launch",
    "unified_attention",
    "validate_metadata",
]
