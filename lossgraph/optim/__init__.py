"""Optimizer updates as ONNX graphs, in each framework's own float32 order of operations.

``build_update(info, params, dtype)`` turns an exported optimizer (:class:`OptimizerInfo`) into
one ONNX graph over all of its parameters and one ONNX Runtime session::

    update = build_update(graph.meta.optimizers["gen"], graph.meta.params, dtype="float32")
    state = update.init_state(params)
    params, state = update.step(params, grads, state, lr)   # one optimizer.step()

``lr`` is the step's learning rate (the caller runs schedulers): torch's ``group["lr"]``,
Paddle's global learning rate (its ``get_lr()``, before per-parameter multipliers); a float for
every group or a list with one per group. A parameter whose gradient is None is skipped and
keeps its state. ``dtype="float64"`` builds the same update in double precision.

Graph inputs are ``<param>``, ``<param>:grad``, ``<param>:<state>`` and per-step scalars
``<param>:<scalar>``; outputs are ``<param>:updated`` and ``<param>:<state>:updated``; nodes are
named ``<param>/<quantity>`` (``fc.weight/exp_avg_sq``). ``update.model`` is the ONNX model.

State keys are ``<param>:<name>``, with the framework's own names and meanings:

========================  =====================================================================
torch SGD                 ``momentum_buffer`` (momentum != 0 only; absent until the parameter's
                          first update, which copies the gradient into it, as torch does)
torch Adam, AdamW         ``step`` (count of updates, a 0-d array), ``exp_avg``, ``exp_avg_sq``,
                          ``max_exp_avg_sq`` (amsgrad)
Paddle SGD                none
Paddle Momentum           ``velocity``
Paddle Adam, AdamW        ``moment1``, ``moment2``, ``moment2_max`` (amsgrad), ``beta1_pow_acc``
                          and ``beta2_pow_acc`` (shape [1]; beta**(t+1) after t updates, as
                          Paddle's accumulators start at beta)
========================  =====================================================================

Per-step scalars: torch computes its bias corrections in Python double precision
(``step_size = lr / (1 - beta1**step)``, ``bias_correction2_sqrt``, AdamW's ``1 - lr * wd``);
they are computed the same way and fed in the graph's dtype. Paddle computes its corrections
inside the kernel from the ``beta*_pow_acc`` state, so the graph does too. The vectorized CPU
kernels of both frameworks fuse multiply-adds; the float32 graphs reproduce them (see
:mod:`lossgraph.optim.graph`), float64 graphs use separate Mul and Add.

Settings an update cannot reproduce raise :class:`~lossgraph.errors.UnsupportedOpError`: torch
``fused``, ``capturable`` or ``differentiable``; Paddle regularizers other than
``L2Decay``/``L1Decay`` and Momentum's ``rescale_grad`` (and a ``grad_clip`` recorded by an older
lossgraph as a hyper-parameter: clipping now runs before the update, :mod:`lossgraph.optim.clip`).
"""

from lossgraph.optim import paddle_rules, torch_rules  # noqa: F401  (they register the rules)
from lossgraph.optim.update import RULES, OptimizerUpdate, Slot, UpdateRule, build_update

__all__ = ["RULES", "OptimizerUpdate", "Slot", "UpdateRule", "build_update"]
