"""The contract between a sampler and the driver (:mod:`elbox.mcmc.run`), which knows nothing else.

A :class:`Sampler` is four pure pieces, all for one chain (the driver batches chains with
``vmap`` and loops with ``lax.scan``):

* ``init(position, log_density, log_density_fn) -> state``: the state at a flat unconstrained
  position whose (finite) log density the driver has already computed; a kernel that needs
  more (a gradient) computes it from ``log_density_fn``;
* ``build_kernel(log_density_fn) -> kernel``, with ``kernel(key, state, params) -> (state, info)``
  one transition; its tunable parameters (a proposal scale; a step size and inverse mass matrix)
  are an argument, so the warm-up can change them without rebuilding anything, and the target
  is chosen per call (a tempered target is one more ``build_kernel``, at no cost);
* ``tuner``: a :class:`Tuner`, the warm-up adaptation of ``params``;
* ``stats(info, state) -> {name: array}``: the per-draw ``sample_stats`` (``lp`` and
  ``acceptance_rate`` at least; a gradient kernel adds ``n_steps``, the gradient evaluations,
  and a Hamiltonian one ``diverging`` and ``energy``; NUTS ``tree_depth``);
* ``settings``: the sampler's resolved options (``max_tree_depth``, ``target_acceptance``, ...),
  kept in the results.

Samplers are found by name in :data:`elbox.mcmc.registry.SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Tuner(NamedTuple):
    """Warm-up adaptation of a kernel's parameters, one chain at a time.

    Attributes:
        init: ``(key, state, log_density_fn) -> tuner_state``, the state before warm-up, from the
            chain's initial kernel state (a step-size heuristic or a first preconditioner may
            look at the target there).
        params: ``tuner_state -> params``, the kernel's parameters during warm-up.
        update: ``(tuner_state, info, state, window) -> tuner_state`` after each warm-up step;
            ``window`` holds the step's flags in Stan's windowed schedule (``in_slow_window``,
            ``window_end``; see :func:`elbox.mcmc.warmup.warmup_schedule`).
        final: ``tuner_state -> params``, the parameters kept fixed after warm-up.
        report: ``final params (batched over chains) -> {name: array}``, what the results keep
            of the adaptation (``SamplingResults.tuning``).
    """

    init: Callable[[], Any]
    params: Callable[[Any], Any]
    update: Callable[[Any, Any, Any, dict], Any]
    final: Callable[[Any], Any]
    report: Callable[[Any], dict]


class Sampler(NamedTuple):
    """A Markov kernel as the driver sees it; see the module docstring."""

    name: str
    init: Callable[[Any, Any, Callable], Any]
    build_kernel: Callable[[Callable], Callable]
    tuner: Tuner
    stats: Callable[[Any, Any], dict]
    settings: dict = {}


def fixed_parameters(params, report: Callable[[Any], dict] | None = None) -> Tuner:
    """A tuner that adapts nothing: ``params`` before, during and after warm-up."""
    return Tuner(
        init=lambda key, state, log_density_fn: (),
        params=lambda _: params,
        update=lambda tuner_state, info, state, window: tuner_state,
        final=lambda _: params,
        report=report or (lambda _: {}),
    )
