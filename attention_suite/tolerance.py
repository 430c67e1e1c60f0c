"""The tolerance rule, in one place.

A kernel output passes when, over the rows it must write,

    max |out - golden|  <= K_MAX  * max |baseline - golden|  + floor_max
    mean |out - golden| <= K_MEAN * mean |baseline - golden| + floor_mean

where ``golden`` is the reference in float64 and ``baseline`` is the same reference computed
in the kernel's own dtype (every step rounded to it). Non-finite output where the golden is
finite never passes.

Why these constants:
- K_MAX = K_MEAN = 2. The kernel keeps logits, the running max/sum and the accumulator in
  float32 and rounds only the probabilities (before the P @ V product) and the final output
  to the input dtype; the baseline also rounds the logits, the softmax and the product. A
  correct kernel therefore lands at or below the baseline's error; the factor 2 absorbs the
  different summation order of tiled online softmax (tile-wise rescaling reorders the sums)
  without admitting a real bug, which shows up as errors orders of magnitude larger (a
  dropped rescale, a missed tile, a wrong mask: see the mutation catalog in triage/).
- floor = (half an ulp of the output dtype + KERNEL_FP32_ULPS ulps of float32) at the
  output's magnitude (max |golden| for the max rule, mean |golden| for the mean rule).
  The half ulp: the final store must round to the output dtype, so even a perfect kernel can
  be half an ulp off, while the baseline's error can be smaller by luck on tiny batches.
  The float32 ulps: whatever the input dtype, the kernel's internals are float32 and carry a
  rounding chain the baseline does not have: scores converted to log2 units (one rounding in
  the scale, one in every exp2 argument, ex2.approx on GPUs) and one accumulator rescale per
  KV tile. For fp16/bf16 this term is negligible next to the baseline's own error; for
  float32 inputs, where the baseline works at the kernel's precision, it is what the rule
  must allow (seen: a 1-row float32 case with a sink at 1.01x the bare 2x-baseline rule).
  For fp8 output the comparison is done after dequantizing with output_scale, and the floor
  is in those units.

Quantized caches need no constant of their own: golden and baseline read the same stored values
(``reference.paged.dequantize``), so the quantization error is in neither comparison, and the
baseline rounds where a kernel must.
- int8 / fp8 per-token-head: the baseline dequantizes each row into its compute dtype (one
  rounding of ``value * scale``), the kernel dots exact stored values and scales the scores and
  probabilities in float32: no rounding the baseline lacks.
- INT4 (vLLM's rotated format, ``reference.int4``): derived the same way. The baseline rebuilds
  each row ``R^-1 ((u - zero) * scale)`` in its compute dtype (the product and every stage of the
  rotation rounded); the kernel dots the exact ``u - zero`` and scales in float32 like int8, and
  instead rotates q by ``R / b`` (float32, one rounding to q's dtype: a relative 2^-11 for fp16
  per element, as the baseline's rows get) and the output back in float32 before the store. So
  the same K_MAX = K_MEAN = 2; measured on the interpreter, the INT4 cases of every table sit at
  0.13-0.5 of the allowance (the floor-scale rows, whose outputs are fp16 subnormals, at 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

K_MAX = 2.0
K_MEAN = 2.0
KERNEL_FP32_ULPS = 8.0


@dataclass(frozen=True)
class Verdict:
    passed: bool
    max_err: float
    mean_err: float
    allowed_max: float
    allowed_mean: float
    nonfinite: int
    what: str = "out"  # the output judged: out, or softmax_lse

    def named(self, what: str) -> "Verdict":
        return replace(self, what=what)

    @property
    def ratio(self) -> float:
        """Error over allowance (the worse of max and mean); > 1 fails."""
        if self.nonfinite:
            return float("inf")
        ratios = [e / a if a > 0 else (0.0 if e == 0 else float("inf"))
                  for e, a in ((self.max_err, self.allowed_max), (self.mean_err, self.allowed_mean))]
        return max(ratios)

    def message(self) -> str:
        return (f"{self.what}: max err {self.max_err:.3e} (allowed {self.allowed_max:.3e}), mean err {self.mean_err:.3e} "
                f"(allowed {self.allowed_mean:.3e}), non-finite {self.nonfinite}, ratio {self.ratio:.3g}")


def _ulp(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def as_values(out: torch.Tensor, output_scale) -> torch.Tensor:
    """Output in float64 units comparable to the golden (fp8 output is dequantized)."""
    values = out.to(torch.float64)
    if output_scale is not None and out.element_size() == 1:
        values = values * output_scale.to(torch.float64).reshape(())
    return values


def judge(actual: torch.Tensor, golden: torch.Tensor, baseline: torch.Tensor, out_dtype: torch.dtype) -> Verdict:
    """Apply the rule to float64 tensors of equal shape."""
    golden_finite = torch.isfinite(golden)
    nonfinite = int((~torch.isfinite(actual) & golden_finite).sum())
    if actual.numel() == 0:
        return Verdict(True, 0.0, 0.0, 0.0, 0.0, 0)
    err = (actual - golden).abs().nan_to_num(nan=float("inf"), posinf=float("inf"))
    base_err = (baseline - golden).abs()
    half_ulp = 0.5 * _ulp(out_dtype) + KERNEL_FP32_ULPS * _ulp(torch.float32)
    magnitude = golden.abs()
    allowed_max = K_MAX * float(base_err.max()) + half_ulp * float(magnitude.max())
    allowed_mean = K_MEAN * float(base_err.mean()) + half_ulp * float(magnitude.mean())
    max_err, mean_err = float(err.max()), float(err.mean())
    passed = nonfinite == 0 and max_err <= allowed_max and mean_err <= allowed_mean
    return Verdict(passed, max_err, mean_err, allowed_max, allowed_mean, nonfinite)
