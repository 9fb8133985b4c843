"""Schedulers by name, built from the loaded model's own scheduler config so training settings carry over."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from backend.errors import RequestError

# name → (class, settings over the model's config). A1111's names in the comments.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),  # Euler
    "euler_a": (EulerAncestralDiscreteScheduler, {}),  # Euler a
    "heun": (HeunDiscreteScheduler, {}),  # Heun
    "ddim": (DDIMScheduler, {}),  # DDIM
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # PLMS
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),  # DPM++ 2M
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "lcm": (LCMScheduler, {}),  # LCM, for LCM-distilled models and LoRAs
}


def scheduler_names() -> tuple[str, ...]:
    """Every scheduler name a request may use."""
    return tuple(SCHEDULERS)


def make_scheduler(name: str, model_config: Any) -> SchedulerMixin:
    """A fresh scheduler called `name` with the model's training settings (betas, prediction type, offset).

    A fresh one per run because schedulers are stateful (step index, multistep history).
    """
    if name not in SCHEDULERS:
        raise RequestError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(dict(model_config), **overrides)
