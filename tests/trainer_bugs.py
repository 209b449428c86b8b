"""Bugs planted IN THE PADDLE TRAINER's code path: each wraps ``paddle_impl.train.build_optimizer``
(what every user of the trainer, align included, calls) so that it builds something other than
the recipe says. Used by tests/test_planted_bugs.py and benchmarks/backward_sensitivity.py.

Each entry maps a name to a function ``plant(build) -> build'`` of the original builder.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

Build = Callable[[Any, Mapping[str, Any]], Tuple[Any, Any]]


def _recipe_change(**changes: Callable[[Any], Any]) -> Callable[[Build], Build]:
    def plant(build: Build) -> Build:
        def planted(model: Any, recipe: Mapping[str, Any]) -> Tuple[Any, Any]:
            return build(model, {**recipe, **{k: f(recipe[k]) for k, f in changes.items()}})

        return planted

    return plant


def per_tensor_clip_class() -> type:
    """``paddle.nn.ClipGradByNorm``'s rule (each tensor clipped to the norm alone), written with
    ops that have float64 CPU kernels: Paddle 3.3.1's own ``clip_by_norm`` kernel is float32-only
    on CPU, so the real class raises in a float64 run instead of diverging."""
    import paddle

    class PerTensorClip(paddle.nn.ClipGradByNorm):
        @paddle.no_grad()
        def _dygraph_clip(self, params_grads):
            out = []
            for p, g in params_grads:
                if g is None:
                    continue
                norm = paddle.sqrt((g * g).sum())
                out.append((p, g * (self.clip_norm / paddle.maximum(norm, paddle.full_like(norm, self.clip_norm)))))
            return out

    return PerTensorClip


def _per_tensor_clip(build: Build) -> Build:
    def planted(model: Any, recipe: Mapping[str, Any]) -> Tuple[Any, Any]:
        optimizer, scheduler = build(model, recipe)
        dtype = str(next(iter(optimizer._parameter_list)).dtype)
        import paddle

        clip = paddle.nn.ClipGradByNorm if "float32" in dtype else per_tensor_clip_class()
        optimizer._grad_clip = clip(recipe["clip_norm"])  # BUG: per tensor, not the global norm
        return optimizer, scheduler

    return planted


def _scheduler_twice(build: Build) -> Build:
    def planted(model: Any, recipe: Mapping[str, Any]) -> Tuple[Any, Any]:
        optimizer, scheduler = build(model, recipe)
        step = scheduler.step

        def twice(*args: Any, **kwargs: Any) -> None:  # BUG: stepped twice per iteration
            step(*args, **kwargs)
            step(*args, **kwargs)

        scheduler.step = twice
        return optimizer, scheduler

    return planted


def _gradients_kept(build: Build) -> Build:
    def planted(model: Any, recipe: Mapping[str, Any]) -> Tuple[Any, Any]:
        optimizer, scheduler = build(model, recipe)
        optimizer.clear_grad = lambda *args, **kwargs: None  # BUG: gradients accumulate
        return optimizer, scheduler

    return planted


TRAINER_BUGS: Dict[str, Callable[[Build], Build]] = {
    "weight_decay_x10": _recipe_change(weight_decay=lambda v: 10 * v),
    "per_tensor_clip": _per_tensor_clip,
    "scheduler_twice": _scheduler_twice,
    "poly_power_1": _recipe_change(poly_power=lambda v: 1.0),
    "momentum_0": _recipe_change(momentum=lambda v: 0.0),
    "gradients_not_cleared": _gradients_kept,
}


def plant(monkeypatch: Any, name: str) -> None:
    """Plant bug ``name`` in ``paddle_impl.train.build_optimizer`` (undone by ``monkeypatch``)."""
    import paddle_impl.train

    monkeypatch.setattr(paddle_impl.train, "build_optimizer", TRAINER_BUGS[name](paddle_impl.train.build_optimizer))
