"""Resuming a run mid-way: when only a late-acting control changed, the steps before it need not run again.

A concept slider that applies from step k leaves steps 0..k-1 exactly as the previous run had them. The
engine keeps, for its last run, the prepared inputs and a snapshot (latents, scheduler, generator state)
at each concept's first step; a new request that differs only in its concepts restarts from the last
snapshot before the first step whose conditioning changed. The result is bit for bit the full run's.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from backend.latent_controls import first_step
from backend.request import Concept, Request


@dataclass
class Snapshot:
    """The state of a run just before step index `step`."""

    step: int
    latents: torch.Tensor
    scheduler: Any
    generator_state: torch.Tensor

    @classmethod
    def take(cls, step: int, latents: torch.Tensor, scheduler: Any, generator: torch.Generator) -> Snapshot:
        """Copy what the next steps will change."""
        return cls(step, latents.clone(), copy.deepcopy(scheduler), generator.get_state())

    def restore(self, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        """(latents, scheduler) to continue from, with the generator put back where it was."""
        generator.set_state(self.generator_state)
        return self.latents.clone(), copy.deepcopy(self.scheduler)


@dataclass
class RunCache:
    """What one run leaves for the next: its prefix key, concepts, prepared inputs and snapshots."""

    key: Request
    concepts: tuple[Concept, ...]
    prepared: Any
    steps: int
    snapshots: dict[int, Snapshot] = field(default_factory=dict)


def prefix_key(r: Request) -> Request:
    """The request without what only acts on late steps (concepts) or not on the latents (previews)."""
    return r.replace(concepts=(), preview="auto", request_id="")


def first_changed_step(old: tuple[Concept, ...], new: tuple[Concept, ...], steps: int) -> int:
    """The first step index at which two concept lists give different conditioning (`steps` if none)."""

    def active(concepts: tuple[Concept, ...]) -> Counter:
        return Counter(
            (c.positive, c.negative, c.weight, first_step(c.start, steps)) for c in concepts if c.weight
        )

    a, b = active(old), active(new)
    changed = (a - b) + (b - a)
    return min((first for *_, first in changed), default=steps)


def resume_point(cache: RunCache | None, r: Request) -> Snapshot | None:
    """The latest snapshot `r` can continue from, or None to run from the start."""
    if cache is None or cache.key != prefix_key(r):
        return None
    limit = first_changed_step(cache.concepts, r.concepts, cache.steps)
    usable = [s for s in cache.snapshots.values() if s.step <= limit]
    return max(usable, key=lambda s: s.step) if usable else None
