"""Regression triage for the paged-attention suite: reproducers, minimizer, error-report
comparison and the mutation check. Entry point: ``python -m triage --help`` (or ``attn-triage``).

Modules are imported lazily by the CLI so that the device (and ``TRITON_INTERPRET``) is set up
before anything imports triton.
"""
