"""The names the command line offers: attention backends and the deliberate breaks.

Kept free of heavy imports so ``python -m eval.gsm8k --help`` can list them without torch.
"""

# sdpa and eager are transformers' own attention (eager where a model's features, e.g. softcap
# or sinks, are not available to sdpa).
# "reference-native": the reference computed in the model's dtype, the same-dtype baseline of the
# gate: its distance from the float64 reference is the rounding noise of this model and dtype
# (both go through the same mapping, so a mapping bug cannot inflate it).
BACKENDS = ("kernel", "reference", "reference-native", "sdpa", "eager")

# Deliberate corruptions for demonstrating that the parity gate bites (``--break-kernel``).
BREAK_MODES = ("none", "scale", "drop-last-block")
# A mapping that loses one feature on its way to the kernel (``--break-mapping``). It is shared
# by both paged backends, as the real mapping is: only transformers' attention can catch it.
MAPPING_BREAKS = ("none", "sinks", "softcap", "window", "chunk")
