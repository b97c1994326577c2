"""The cached scheme: a pool of full DDIM trajectories that micro-steps draw their x_t from.

**Cost.** The original samples ``x_t`` from scratch every micro-step: 2k (guided) + 3 + S UNet rows
(latents evaluated), on average N + 3 + S = 57 for N = 50, S = 4. ``scheme="cached"`` (default) keeps a
pool of ``cache_size`` full DDIM trajectories (all x_t of one (prefix, pair) target prompt, plus the
target's conditional prediction at each step, which guidance computes anyway) and re-samples
``refresh`` of them per optimizer step. Nothing in the regression target depends on Δ, so a cached
(x_t, t, target) is as good as a fresh one; per-(trajectory, k, t) predictions for positive/negative are
memoised. τ, α and the data order come from the same seeded streams as in ``scheme="original"``; only the
x_t reuse differs. Every evaluation is counted (:class:`~reprolib.learn_delta.counter.UNetCounter`). With
the defaults (cache 8, refresh 0.05) a 1000-step run makes 4.9 UNet rows per micro-step against 32.0 for
N = 25 (6.5×) and 5.6 against 56.9 for N = 50 (10×) (``benchmarks/learn_delta_cost.py``); the price is
prompt diversity: 8 + 0.05·steps trajectories in all, each reused about grad_accum/refresh = 200 times.

A checkpoint stores the pool's trajectory ids, not its latents: each trajectory is re-sampled from its seed.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .objective import Problem, seeded, to_prediction


@dataclasses.dataclass
class Trajectory:
    """One cached DDIM trajectory of a combination's target prompt."""

    uid: int
    combo: int
    xs: list[torch.Tensor]  # x after 0..N steps
    outs: list[torch.Tensor]  # the target's conditional UNet output at step 0..N-1
    cells: dict = dataclasses.field(default_factory=dict)  # (k, i) → (pred_target, pred_pos − pred_neg)


class TrajectoryPool:
    """``size`` cached trajectories; new ones replace the oldest, ``refresh`` per optimizer step."""

    def __init__(self, problem: Problem, size: int, refresh: float):
        self.p, self.size, self.refresh = problem, size, refresh
        self.slots: list[Trajectory | None] = [None] * size
        self.next_uid = 0

    def wanted(self, step: int) -> int:
        """How many trajectories exist once step ``step`` (1-based) starts: the pool, then ``refresh`` a step."""
        return self.size + math.floor((step - 1) * self.refresh + 1e-9)

    def advance(self, step: int) -> None:
        """Sample the trajectories that step ``step`` adds (all of the pool at the first step)."""
        target = self.wanted(step)
        for uid in range(max(self.next_uid, target - self.size), target):
            self._add(uid)
        self.next_uid = target

    def _add(self, uid: int) -> None:
        combo = self.p.order(uid)
        xs, outs = self.p.sample(combo, ("noise", "trajectory", uid), self.p.N, keep=True)
        self.slots[uid % self.size] = Trajectory(uid, combo, xs, outs)

    def describe(self) -> list[list[int]]:
        """[uid, combination] of each trajectory held: what a checkpoint stores."""
        return [[t.uid, t.combo] for t in self.slots if t is not None]

    def restore(self, described: list[list[int]], next_uid: int) -> None:
        """Re-sample a checkpointed pool from its trajectories' ids (their seeds)."""
        self.next_uid = next_uid
        for uid, _ in described:
            self._add(uid)

    def pick(self, n: int) -> Trajectory:
        """The trajectory micro-step ``n`` uses."""
        return self.slots[int(torch.randint(self.size, (1,), generator=seeded(self.p.seed, "pick", n)))]

    @torch.no_grad()
    def cell(self, tr: Trajectory, k: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred_target, pred_pos − pred_neg) at (x_k, timesteps[i]), memoised per trajectory."""
        if (k, i) not in tr.cells:
            c, x, p = self.p.combo(tr.combo), tr.xs[k], self.p
            if i == k < len(tr.outs):  # the target's prediction came free with the guided sampling step
                t = p.sched.timesteps[i]
                pt = to_prediction(tr.outs[k], x, t, p.sched, p.target)
                pos, neg = p.predict(x, i, c.emb[1:3]).chunk(2)
            else:
                pt, pos, neg = p.predict(x, i, c.emb).chunk(3)
            tr.cells[(k, i)] = (pt, pos - neg)
        return tr.cells[(k, i)]
