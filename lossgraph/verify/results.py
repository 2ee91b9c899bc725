"""The results of a verification, as data. Formatting lives in ``verify/report.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lossgraph.verify.align import ParamMap
from lossgraph.verify.compare import Tolerance, ValueDiff


@dataclass(frozen=True)
class GraphInfo:
    """Where a compared graph came from."""

    path: str
    framework: str
    source: str
    versions: dict[str, str]
    eager: dict[str, Any]
    #: mixed precision: low element type -> values the graph rounds to it (empty: float32)
    low_precision: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LossDiff:
    """One named loss on both sides."""

    name: str
    reference: float
    candidate: float
    diff: ValueDiff

    @property
    def passed(self) -> bool:
        return self.diff.passed

    @property
    def abs_diff(self) -> float:
        return self.diff.max_abs_diff


@dataclass(frozen=True)
class GradDiff:
    """The gradient of one parameter on both sides, for each loss that was differentiated."""

    losses: dict[str, ValueDiff]

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.losses.values())

    @property
    def max_abs_diff(self) -> float:
        return max((d.max_abs_diff for d in self.losses.values()), default=0.0)

    @property
    def required_tol(self) -> float:
        return max((d.required_tol for d in self.losses.values()), default=0.0)


@dataclass(frozen=True)
class ConventionDiff:
    """A value compared in the candidate framework's convention, not as the reference recorded
    it: a framework convention (e.g. BatchNorm's running variance, unbiased in torch, biased in
    Paddle), not a porting bug. ``converted`` is the diff that counts; ``raw`` is kept."""

    name: str  # the reference's parameter or buffer
    candidate: str
    kind: str  # what was converted, e.g. "running variance"
    reference_convention: str
    candidate_convention: str
    counts: list[int]  # elements per channel of each batch the layer normalized in the step
    raw: ValueDiff
    converted: ValueDiff


@dataclass
class StepResult:
    """One comparison point: the forward check (``loss`` None) or one training step."""

    step: int
    losses: dict[str, LossDiff]
    loss: str | None = None
    optimizer: str | None = None
    gradients: dict[str, GradDiff] = field(default_factory=dict)
    parameters: dict[str, ValueDiff] = field(default_factory=dict)  # after the update
    optimizer_state: dict[str, ValueDiff] = field(default_factory=dict)  # "<param>:<slot>"
    lr: ValueDiff | None = None
    #: values compared in the candidate's convention (their ``parameters`` entry is converted)
    conventions: list[ConventionDiff] = field(default_factory=list)
    #: every tapped module output paired on both sides (``<module path>#<call>``, the
    #: reference's names), in the forward pass from the step's starting values
    taps: dict[str, ValueDiff] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        groups = (
            self.losses.values(), self.taps.values(), self.gradients.values(), self.parameters.values(),
            self.optimizer_state.values(), [self.lr] if self.lr is not None else [],
        )
        return all(d.passed for group in groups for d in group)

    def phase_failed(self) -> str | None:
        """The first phase of this step that diverged: forward, backward or update."""
        if not all(d.passed for d in [*self.losses.values(), *self.taps.values()]):
            return "forward"
        if not all(d.passed for d in self.gradients.values()):
            return "backward"
        rest = [*self.parameters.values(), *self.optimizer_state.values()]
        if self.lr is not None:
            rest.append(self.lr)
        if not all(d.passed for d in rest):
            return "update"
        return None


@dataclass(frozen=True)
class NativeDiff:
    """One side's ONNX Runtime training step against the framework's own eager step."""

    step: int
    losses: dict[str, ValueDiff]
    parameters: ValueDiff  # the worst parameter/buffer after the step
    worst_parameter: str
    #: the same comparison with both runs in float64 (ONNX Runtime and the framework), where the
    #: float32 one is above the tolerance; None where it was not run
    float64: NativeDiff | None = None
    #: max |diff| of each parameter after the step, by name
    each: dict[str, float] = field(default_factory=dict)
    #: where the float64 runs part by rounding the computation amplifies (see
    #: ``lossgraph.verify.noise``): how far the float64 reference's parameters move at this step
    #: from a rounding error in its starting values
    amplified: float | None = None

    @property
    def passed(self) -> bool:
        return self.parameters.passed and all(d.passed for d in self.losses.values())

    @property
    def semantic(self) -> bool:
        """Above the tolerance, and not float32 rounding: the float64 runs part as well (or
        there are none to tell), by more than rounding the computation amplifies."""
        return not self.passed and (self.float64 is None or not self.float64.passed) and self.amplified is None


@dataclass(frozen=True)
class Divergence:
    """Where the two graphs part."""

    step: int
    phase: str  # forward | backward | update
    scope: str
    op_type: str
    reference_node: str
    candidate_node: str
    max_abs_diff: float
    hint: str | None = None
    loss: str | None = None
    localized: bool = False  # False: the point where the diff was observed, not its origin
    source: dict[str, Any] | None = None
    #: the nodes around the divergence on each side ("reference"/"candidate"), for reports
    neighbourhood: dict[str, Any] | None = None
    #: the diverging value on both sides and the origin's inputs: min/max/mean/std, and the
    #: max relative diff and smallest tolerance that would have passed there
    statistics: dict[str, Any] | None = None


@dataclass
class VerifyResult:
    """Everything a verification found; ``bool(result)`` is whether it passed."""

    reference: GraphInfo
    candidate: GraphInfo
    tolerance: Tolerance
    seed: int
    inputs_source: str
    param_map: ParamMap
    steps: list[StepResult]
    first_divergence: Divergence | None = None
    noise_floor: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    native: dict[str, list[NativeDiff]] = field(default_factory=dict)  # "reference"/"candidate"
    strict: bool = False  # float32 noise above the tolerance counts as divergence

    @property
    def within_tolerance(self) -> bool:
        return all(step.passed for step in self.steps)

    @property
    def noise_only(self) -> bool:
        """Every diff above the tolerance vanishes in float64: float32 rounding noise."""
        return bool(self.noise_floor) and self.noise_floor.get("verdict") == "noise"

    @property
    def native_failures(self) -> list[tuple[str, NativeDiff]]:
        """(side, step) where ONNX Runtime's training of a side parts from its framework's own
        eager training beyond the tolerance (``--native``): the exported graph is not faithful."""
        return [(side, diff) for side, diffs in self.native.items() for diff in diffs if diff.semantic]

    @property
    def passed(self) -> bool:
        agree = self.within_tolerance or (self.noise_only and not self.strict)
        return agree and not self.native_failures

    def __bool__(self) -> bool:
        return self.passed
