"""The bug gallery: real porting bugs, each a (reference, candidate) pair, and where
``lossgraph verify`` must find it: the step, the phase, the module scope and the likely cause
(and, where given, the op). Some pairs are listed both ways: either framework may be the reference.

    python examples/bugs/catalog.py            # prints the table
    python examples/bugs/catalog.py --run NAME # exports the pair and runs lossgraph verify

Every entry is checked by tests/test_bug_gallery.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    reference: str  # FILE.py:NAME below examples/
    candidate: str
    args: tuple[str, ...]  # lossgraph verify options needed to see it
    step: int
    phase: str
    scope: str  # the scope reported must start with this ("" = the loss at top level)
    hint: str  # a phrase the likely cause must contain
    about: str = ""
    tags: tuple[str, ...] = field(default=())
    op: str = ""  # the op the report must name ("" = not checked)

    def target(self, which: str) -> str:
        return str(EXAMPLES / (self.reference if which == "reference" else self.candidate))


BUGS = [
    Bug("linear_not_transposed", "losses/losses_torch.py:mse",
        "losses/losses_paddle_planted.py:linear_not_transposed", (), 0, "forward", "fc",
        "Linear weight layout", "a square Linear weight used as torch stores it"),
    Bug("hinge_margin", "losses/losses_torch.py:hinge_embedding",
        "losses/losses_paddle_planted.py:hinge_margin", (), 0, "forward", "",
        "constant differs", "HingeEmbeddingLoss margin 0.5 instead of 1.0"),
    Bug("bce_without_clamp", "bugs/bugs_torch.py:bce_saturated", "bugs/bugs_paddle.py:bce_no_clamp",
        (), 0, "forward", "", "clamps log", "hand-written BCE with +1e-12 instead of the -100 clamp"),
    Bug("kl_mean_vs_batchmean", "bugs/bugs_torch.py:kl_batchmean", "bugs/bugs_paddle.py:kl_mean",
        (), 0, "forward", "", "reduction", "KL divergence 'mean' where 'batchmean' was meant"),
    Bug("kl_mean_vs_batchmean_reversed", "bugs/bugs_paddle.py:kl_mean", "bugs/bugs_torch.py:kl_batchmean",
        (), 0, "forward", "", "reduction", "the other direction: a Paddle original with 'mean', ported "
        "with 'batchmean'", op="Div"),
    Bug("cross_entropy_axis", "bugs/bugs_torch.py:ce_spatial", "bugs/bugs_paddle.py:ce_last_axis",
        (), 0, "forward", "", "class axis", "Paddle's cross_entropy takes the classes last"),
    Bug("cross_entropy_axis_reversed", "bugs/bugs_paddle.py:ce_last_axis", "bugs/bugs_torch.py:ce_spatial",
        (), 0, "forward", "", "class axis", "the other direction: a Paddle original whose classes "
        "are the last axis, ported to torch's cross_entropy (classes on axis 1)", op="Transpose"),
    Bug("avgpool_exclusive", "bugs/bugs_torch.py:pooled", "bugs/bugs_paddle.py:pooled_exclusive",
        (), 0, "forward", "pool", "count_include_pad", "AvgPool padding counted in torch, not in Paddle"),
    Bug("batchnorm_epsilon", "discogan/discogan_torch.py:spec", "bugs/bugs_paddle.py:discogan_bn_epsilon",
        ("--grads", "--no-noise-floor"), 0, "forward", "discriminator_B.bn3", "BatchNorm epsilon",
        "one BatchNorm of DiscoGAN at epsilon 1e-3", ("discogan",)),
    Bug("batchnorm_epsilon_reversed", "bugs/bugs_paddle.py:discogan_bn_epsilon", "discogan/discogan_torch.py:spec",
        ("--no-noise-floor",), 0, "forward", "discriminator_B.bn3", "BatchNorm epsilon",
        "the other direction: the Paddle original's BatchNorm at epsilon 1e-3, the torch port's at "
        "1e-5", ("discogan",)),
    Bug("conv_kernel_transposed", "discogan/discogan_torch.py:spec",
        "discogan/discogan_paddle_planted.py:kernel_transposed", ("--no-noise-floor",), 0, "forward",
        "discriminator_A.conv5", "transposes", "a converted Conv kernel with its spatial axes swapped",
        ("discogan",)),
    Bug("conv_kernel_transpose_dropped", "discogan/discogan_paddle_planted.py:kernel_transposed",
        "discogan/discogan_torch.py:spec", ("--no-noise-floor",), 0, "forward", "discriminator_A.conv5",
        "reference transposes", "the other direction: the reference (Paddle) swaps a kernel's spatial "
        "axes before its Conv, the port (torch) uses the kernel as stored", ("discogan",), op="Conv"),
    Bug("missing_detach", "bugs/bugs_torch.py:gan_train", "bugs/bugs_paddle.py:gan_no_detach",
        ("--steps", "2"), 0, "backward", "generator", "detach", "the D step backpropagates into G"),
    Bug("adam_epsilon", "bugs/bugs_torch.py:classifier", "bugs/bugs_paddle.py:classifier_adam_epsilon",
        ("--steps", "3"), 0, "update", "fc", "adam epsilon", "Adam epsilon 1e-6 instead of 1e-8"),
    Bug("weight_decay_missing", "bugs/bugs_torch.py:classifier",
        "bugs/bugs_paddle.py:classifier_no_weight_decay", ("--steps", "3"), 0, "update", "fc",
        "weight_decay", "Adam without its weight decay"),
    Bug("scheduler_timing", "bugs/bugs_torch.py:classifier",
        "bugs/bugs_paddle.py:classifier_scheduler_before", ("--steps", "3"), 1, "update", "",
        "learning rates differ", "scheduler.step() before optimizer.step()"),
    Bug("batchnorm_momentum", "bugs/bugs_torch.py:bn_classifier", "bugs/bugs_paddle.py:bn_momentum",
        ("--steps", "2"), 0, "update", "bn", "momentum convention", "torch's momentum 0.1 in Paddle"),
    Bug("dropout_rate", "bugs/bugs_torch.py:classifier", "bugs/bugs_paddle.py:classifier_dropout",
        (), 0, "forward", "drop", "dropouts differ", "Dropout(0.3) instead of 0.5"),
    Bug("bce_pos_weight_missing", "bugs/bugs_torch.py:bce_pos_weight", "bugs/bugs_paddle.py:bce_no_pos_weight",
        (), 0, "forward", "criterion", "without counterpart on the other side: in the reference "
        "criterion.pos_weight (buffer [4], all 3)", "BCEWithLogitsLoss(pos_weight=...) ported without "
        "its pos_weight (a buffer only one side has)"),
    Bug("bce_pos_weight_added", "bugs/bugs_paddle.py:bce_no_pos_weight", "bugs/bugs_torch.py:bce_pos_weight",
        (), 0, "forward", "criterion", "in the candidate criterion.pos_weight (buffer [4], all 3)",
        "the other direction: an unweighted Paddle original ported with a pos_weight"),
    # the advantage feeds the critic's term too: its gradient differs without being zero
    Bug("actor_critic_no_detach", "bugs/bugs_torch.py:actor_critic", "bugs/bugs_paddle.py:actor_critic_no_detach",
        ("--steps", "2"), 0, "backward", "value", "reference stops the gradient at",
        "A2C's advantage not detached in the actor's term (it also feeds the critic's)"),
    Bug("actor_critic_detach_added", "bugs/bugs_paddle.py:actor_critic_no_detach",
        "bugs/bugs_torch.py:actor_critic_value_detached", ("--steps", "2"), 0, "backward", "value",
        "candidate stops the gradient at", "the other direction, the torch port written with a detached "
        "value: the policy gradient no longer reaches the critic"),
    Bug("clamp_ported_straight_through", "bugs/bugs_torch.py:clipped", "bugs/bugs_paddle.py:clipped_straight_through",
        ("--steps", "2"), 0, "backward", "fc1", "candidate passes the gradient straight through",
        "clamp ported as a straight-through estimate x + (clip(x) - x).detach(): same values, gradient 1"),
    Bug("straight_through_ported_as_clamp", "bugs/bugs_paddle.py:clipped_straight_through",
        "bugs/bugs_torch.py:clipped", ("--steps", "2"), 0, "backward", "fc1",
        "reference passes the gradient straight through", "the other direction: a straight-through "
        "clip ported as a plain clamp (gradient 0 where it clips)"),
]

#: Correct ports: must pass (or differ only by float32 noise, or by the documented running-
#: variance convention for BatchNorm in training mode).
CORRECT = [
    ("bugs/bugs_torch.py:classifier", "bugs/bugs_paddle.py:classifier", ("--steps", "3")),
    ("bugs/bugs_torch.py:gan_train", "bugs/bugs_paddle.py:gan_train", ("--steps", "2")),
    # torch's pos_weight is a buffer of the loss module, Paddle's a constant: unpaired, equal
    ("bugs/bugs_torch.py:bce_pos_weight", "bugs/bugs_paddle.py:bce_pos_weight", ("--steps", "2")),
    ("bugs/bugs_torch.py:actor_critic", "bugs/bugs_paddle.py:actor_critic", ("--steps", "2")),
    ("bugs/bugs_torch.py:actor_critic_value_detached", "bugs/bugs_paddle.py:actor_critic", ("--steps", "2")),    ("bugs/bugs_torch.py:clipped", "bugs/bugs_paddle.py:clipped", ("--steps", "2")),
    ("bugs/bugs_torch.py:clipped_straight_through", "bugs/bugs_paddle.py:clipped_straight_through", ("--steps", "2")),
]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        bug = next(b for b in BUGS if b.name == sys.argv[2])
        out = Path("gallery_out")
        out.mkdir(exist_ok=True)
        for which in ("reference", "candidate"):
            subprocess.run(["lossgraph", "export", bug.target(which), "-o", str(out / f"{which}.onnx")],
                           check=True, stdout=subprocess.DEVNULL)
        sys.exit(subprocess.run(["lossgraph", "verify", str(out / "reference.onnx"),
                                 str(out / "candidate.onnx"), *bug.args]).returncode)
    for bug in BUGS:
        print(f"{bug.name:30s} step {bug.step} {bug.phase:8s} {bug.scope or '(loss)':24s} {bug.about}")


if __name__ == "__main__":
    main()
