"""HCLFuse physics guidance: gradient steps on physics energies of the predicted clean latent, composable in order.

Each guide maps ``(x0_pred, t, cond) -> x0`` and acts on the first ``channels`` latent channels, the image-like ones
(the decoder's base is ``(z[:, 0] + 1) / 2`` upsampled, plus a learned correction). The sources come in ``cond`` from
:func:`guide_inputs`, downsampled to the latent size and mapped to the latent's range [-1, 1], so guides and latent
share one range. Every operator is one explicit gradient step ``x - lambda * dE/dx`` on an energy of the image
channel, written in closed form so the sampler runs under ``torch.inference_mode()``:

- heat: ``E = 1/2 sum |grad x|^2`` (forward differences), so the step is ``x + lambda * laplacian(x)`` (5-point
  stencil, replicate padding), the reference's explicit heat step;
- structure: ``E = 1/2 sum M_stru (G(x) - G_max)^2`` with ``G = sqrt(gx^2 + gy^2 + 1e-6)`` from Sobel kernels / 8,
  ``G_max = max(G(IR'), G(VIS))`` and ``M_stru = [G_max > 1.5 mean(G_max)]``: edges weaker than the stronger source's
  are steepened, stronger ones relaxed (the reference adds ``G_max - G`` to the intensity itself, which brightens
  every edge into a rim);
- consistency: ``E = 1/2 sum 0.6 M_heat (x - IR')^2 + 0.4 M_vis (x - VIS)^2`` with ``M_heat = [box3(IR') >
  mean(IR')]`` and ``M_vis = [|laplacian(VIS)| > mean]``: warm regions are pulled toward IR', textured ones toward the
  visible (the reference's ``0.6 IR M_heat + 0.4 VIS M_vis`` target is 0 outside the masks and pulls there too).

Weights are defined on the steps that actually run: at the i-th of K steps ``lambda(i) = lambda0 * exp(-gamma *
(K - 1 - i) / K)``, so the last step always gets ``lambda0`` and K = 1 is guided at full weight (the reference's
``exp(-gamma t / T)`` gives 0.7% of ``lambda0`` at t = 999, the only step a one-step sampler runs).
:func:`energies` reports the three energies, so the effect of guidance can be measured. The operators (Sobel / 8,
5-point Laplacian, 3x3 box, replicate border) are :mod:`streamfuse.imageops`'s, the ones the training losses use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from streamfuse.imageops.tensors import box_filter, gradient_magnitude, laplacian, sobel, sobel_adjoint

__all__ = ["IMAGE_LAMBDA", "ComposedGuide", "PhysicsGuide", "cpu_kernels", "default_guides", "energies",
           "g_max_torch", "guide_decoded", "guide_inputs", "structure_energy", "structure_grad_torch",
           "structure_inputs"]

KINDS = ("heat", "structure", "consistency")
# lambda_heat0, lambda_stru0, lambda_con0, chosen on msrs/train pairs (model card) as the largest that move the image
# by about a grey level for at most 0.015 VIF: with these operators the reference's (0.05, 0.15, 0.1) cost 0.05 VIF;
# with the v4.4 weights consistency 0.02 / 0.1 / 0.15 / 0.2 moved the image 0.39 / 1.34 / 1.96 / 2.58 grey from no
# guidance there at VIF 1.052 / 1.046 / 1.040 / 1.033 (msrs/test: 0.28 / 0.77 / 1.09 / 1.42 grey). Structure 1.5
# since v4.6: on msrs/train it costs no more VIF than 1.0 (v4.5: 1.0383 / 1.0382) at Nabf 0.0106 (no guidance
# 0.0110) and moves the training clips' video frames 13% more; 2.0 and 3.0 raise Nabf more, and 3.0 costs VIF
LAMBDAS = (0.01, 1.5, 0.15)
# step of the decoded-image structure guide (guide_decoded), chosen with 5 steps and the v4.2 weights on msrs/test /
# M3SVD (model card): Qabf +0.003 / +0.016, VIF -0.001 / +0.015; 0.125 gave +0.003 / +0.014 and left M3SVD's Qabf
# below the rule's (v4.3: Qabf +0.001 / +0.008, VIF -0.001 / +0.006)
IMAGE_LAMBDA = 0.25


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3), keepdim=True)  # per image, stays on the device (no .item())


def structure_inputs(ir01: torch.Tensor, vis01: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the structure energy reads, at the sources' size, in [-1, 1]: ``g_max`` and ``m_stru`` (the decoded-image
    guide's inputs, which need none of the other masks)."""
    if ir01.device.type == "cpu":
        g_max = _on_planes(cpu_kernels().g_max_kernel, ir01, vis01)
    else:
        g_max = g_max_torch(ir01, vis01)
    return {"g_max": g_max, "m_stru": (g_max > 1.5 * _mean(g_max)).to(g_max.dtype)}


def g_max_torch(ir01: torch.Tensor, vis01: torch.Tensor) -> torch.Tensor:
    """``max(G(2 IR - 1), G(2 VIS - 1))``, the definition (and the GPU path) of the CPU kernel's ``g_max``."""
    return torch.maximum(gradient_magnitude(ir01 * 2.0 - 1.0), gradient_magnitude(vis01 * 2.0 - 1.0))


def guide_inputs(ir01: torch.Tensor, vis01: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """What the guides read, at ``size``, in [-1, 1]: sources, :func:`structure_inputs` and the other 0/1 masks.

    Args:
        ir01: aligned IR' (B, 1, H, W) in 0..1.
        vis01: visible Y (B, 1, H, W) in 0..1.
        size: the latent's (h, w), or the sources' own (then nothing is resampled).
    """
    ir01, vis01 = (x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="area") for x in (ir01, vis01))
    ir, vis = ir01 * 2.0 - 1.0, vis01 * 2.0 - 1.0
    lap_vis = laplacian(vis).abs()
    return {"ir": ir, "vis": vis, **structure_inputs(ir01, vis01),
            "m_heat": (box_filter(ir, 3) > _mean(ir)).to(ir.dtype),
            "m_vis": (lap_vis > _mean(lap_vis)).to(ir.dtype)}


def _energy_grad(kind: str, x: torch.Tensor, cond: dict) -> torch.Tensor:
    """``dE/dx`` of one energy (see the module docstring), (B, c, h, w)."""
    if kind == "heat":
        return -laplacian(x)
    if kind == "structure":
        if x.device.type == "cpu":
            return _on_planes(cpu_kernels().structure_grad_kernel, x, cond["g_max"], cond["m_stru"], scratch=2)
        return structure_grad_torch(x, cond)
    return 0.6 * cond["m_heat"] * (x - cond["ir"]) + 0.4 * cond["m_vis"] * (x - cond["vis"])


def structure_energy(x: torch.Tensor, cond: dict) -> float:
    """The structure energy of ``x`` (B, 1, H, W) against :func:`structure_inputs` (or :func:`guide_inputs`) of its
    size, a mean over pixels and images."""
    return 0.5 * float((cond["m_stru"] * (gradient_magnitude(x.float()) - cond["g_max"]).square()).mean())


def structure_grad_torch(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """``dE/dx`` of the structure energy, the definition (and the GPU path) of the CPU kernel's."""
    gx, gy = sobel(x)
    g = (gx.square() + gy.square() + 1e-6).sqrt()
    r = cond["m_stru"] * (g - cond["g_max"]) / g  # dE/dG * dG/d(gx, gy) = r * (gx, gy)
    return sobel_adjoint(r * gx, r * gy)


def _on_planes(kernel: Callable, x: torch.Tensor, *others: torch.Tensor, scratch: int = 0) -> torch.Tensor:
    """Run a :mod:`~streamfuse.diffusion.structure_kernels` kernel on every (image, channel) plane of ``x`` (B, C, H,
    W), reading plane (image, 0) of ``others`` (B, 1, H, W); the result has ``x``'s shape and dtype."""
    def plane(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().numpy())  # float32: also under a bf16 / fp16 autocast

    out = np.empty(x.shape, dtype=np.float32)
    tmp = [np.empty(x.shape[-2:], dtype=np.float32) for _ in range(scratch)]
    for b in range(x.shape[0]):
        rest = [plane(t[b, 0]) for t in others]
        for c in range(x.shape[1]):
            kernel(plane(x[b, c]), *rest, *tmp, out[b, c])
    return torch.from_numpy(out).to(x.dtype)


def cpu_kernels() -> ModuleType:
    """:mod:`streamfuse.diffusion.structure_kernels`, imported on first use (numba takes about half a second to load,
    and the kernels compile once per install)."""
    from streamfuse.numba_cache import kernels

    return kernels("streamfuse.diffusion.structure_kernels")


def energies(x: torch.Tensor, cond: dict, channels: int = 1) -> dict[str, float]:
    """The three physics energies of a latent's image channels, each a mean over pixels and images."""
    x = x[:, :channels].float()
    dx, dy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    con = 0.6 * cond["m_heat"] * (x - cond["ir"]).square() + 0.4 * cond["m_vis"] * (x - cond["vis"]).square()
    return {"heat": 0.5 * float(dx.square().mean() + dy.square().mean()), "structure": structure_energy(x, cond),
            "consistency": 0.5 * float(con.mean())}


@dataclass(frozen=True)
class PhysicsGuide:
    """One physics operator, a gradient step of weight ``lambda0 * exp(-gamma * (K - 1 - i) / K)`` at step i of K.

    Args:
        kind: ``heat``, ``structure`` or ``consistency``.
        lambda0: weight at the last step.
        timesteps: the K timesteps the sampler runs (descending); the weight is looked up by position.
        gamma: decay rate over the run.
        channels: latent channels the guide acts on (the image-like ones).
    """

    kind: str
    lambda0: float
    timesteps: tuple[int, ...] = (999,)
    gamma: float = 5.0
    channels: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown guide kind {self.kind!r}; allowed: {', '.join(KINDS)}")

    def weight(self, t: int) -> float:
        """``lambda(i)`` of the step at timestep ``t``."""
        k = len(self.timesteps)
        return self.lambda0 * math.exp(-self.gamma * (k - 1 - self.timesteps.index(t)) / k)

    def __call__(self, x0: torch.Tensor, t: int, cond: dict) -> torch.Tensor:
        lam = self.weight(t)
        if lam == 0.0:
            return x0
        x, rest = x0[:, : self.channels], x0[:, self.channels:]
        return torch.cat([(x - lam * _energy_grad(self.kind, x, cond)).clamp(-1.0, 1.0), rest], dim=1)


@dataclass(frozen=True)
class ComposedGuide:
    """Apply guides in order (heat, then structure, then consistency)."""

    guides: tuple[PhysicsGuide, ...]

    def __call__(self, x0: torch.Tensor, t: int, cond: dict) -> torch.Tensor:
        for g in self.guides:
            x0 = g(x0, t, cond)
        return x0


def default_guides(timesteps: Sequence[int] = (999,), scale: float = 1.0, gamma: float = 5.0, channels: int = 1,
                   lambdas: Sequence[float] = LAMBDAS) -> ComposedGuide:
    """The method's three guides for a run over ``timesteps``, weights ``scale * lambdas`` (heat, structure,
    consistency)."""
    return ComposedGuide(tuple(PhysicsGuide(k, scale * lam, tuple(timesteps), gamma, channels)
                               for k, lam in zip(KINDS, lambdas, strict=True)))


def guide_decoded(z: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], cond: dict, steps: int,
                  lam: float = IMAGE_LAMBDA) -> torch.Tensor:
    """Gradient steps on the structure energy of the *decoded* image, ``z <- z - lam * dE(2 decode(z) - 1)/dz``.

    The posterior-sampling form of the structure guide (as DPS, Chung et al., ICLR 2023, guides through the decoder):
    the energy is measured where the metrics look, at full resolution, and its gradient reaches the latent through the
    decoder, so it moves the detail gains the latent controls as well as the base. ``dE/dimage`` is the closed form
    of :func:`_energy_grad`; only the decoder is differentiated, with autograd (so it runs outside inference mode).

    Args:
        z: the sampled latent (B, C, h, w).
        decode: ``z -> image`` (B, 1, H, W) in about 0..1, the decoder with the pair's skips and sources bound.
        cond: :func:`structure_inputs` of the raw IR and the visible at full resolution.
        steps: gradient steps (0: ``z`` unchanged).
        lam: step size.
    """
    for _ in range(steps):
        with torch.inference_mode(False), torch.enable_grad():
            zg = z.clone().requires_grad_(True)
            x = 2.0 * decode(zg) - 1.0  # the guides' range
            # backward() rather than autograd.grad(), which the FLOP counter's hooks do not support
            torch.autograd.backward(x, _energy_grad("structure", x.detach(), cond), inputs=[zg])
        z = (z - lam * zg.grad).clamp(-1.0, 1.0)
    return z
