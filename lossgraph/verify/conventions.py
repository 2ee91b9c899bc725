"""Defaults and conventions that differ between torch and Paddle, as data.

Each entry names a layer or function, the argument on each side, what each library does by
default, and how a port keeps them equal. The hints read it (a divergence on such a layer
names the argument and both sides' values: ``lossgraph.verify.hints``), the parameter pairing
reads it (InstanceNorm's parameters by default), and ``docs/support-matrix.md`` prints it
(``examples/catalog/support_matrix.py``). Facts from the frameworks' documentation and Paddle's
torch -> Paddle API mapping (PaConvert), each checked by a pair in ``examples/catalog``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    """One default or convention that differs between torch and Paddle."""

    key: str
    layer: str  # the layer or function, as each library names it
    argument: str  # the argument(s), torch's / Paddle's
    torch: str  # what torch does by default
    paddle: str  # what Paddle does by default
    port: str  # how a port computes the same
    #: the ONNX ops a divergence from it shows at, and the attribute that carries it (if any)
    ops: tuple[str, ...] = ()
    attribute: str | None = None
    #: the functions it sits in, as source code calls them, where no op of the graph carries it
    calls: tuple[str, ...] = ()

    def sentence(self) -> str:
        """The convention in one sentence, for a hint."""
        return f"{self.layer} ({self.argument}): torch {self.torch}; Paddle {self.paddle}. {self.port}"


CONVENTIONS = (
    Convention(
        "instance_norm_affine", "InstanceNorm2d / InstanceNorm2D", "affine / weight_attr, bias_attr",
        "has no scale or bias (affine=False)", "learns a scale and a bias by default",
        "Port torch's default as InstanceNorm2D(C, weight_attr=False, bias_attr=False), and "
        "affine=True as Paddle's default.", ("InstanceNormalization",)),
    Convention(
        "dropout_mode", "Dropout", "- / mode",
        "scales kept elements by 1/(1-p) in training and does nothing in eval",
        "does the same with mode='upscale_in_train' (the default); mode='downscale_in_infer' "
        "keeps elements unscaled in training and multiplies by 1 - p in eval",
        "Keep Paddle's mode='upscale_in_train'.", ("Mul",)),
    Convention(
        "batch_norm_momentum", "BatchNorm", "momentum",
        "momentum=0.1 is the weight of the batch: running = (1 - m) running + m batch",
        "momentum=0.9 is the weight of the running statistics: running = m running + (1 - m) batch",
        "Paddle's momentum is 1 - torch's (torch 0.1 = Paddle 0.9)."),
    Convention(
        "epsilon", "BatchNorm, LayerNorm, GroupNorm, InstanceNorm", "eps / epsilon",
        "eps=1e-5", "epsilon=1e-5 (the same default, another name)",
        "Pass torch's eps as Paddle's epsilon.",
        ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"),
        "epsilon"),
    Convention(
        "ceil_mode", "MaxPool, AvgPool", "ceil_mode", "ceil_mode=False", "ceil_mode=False",
        "Pass the same ceil_mode: True keeps a partial window at the end.",
        ("MaxPool", "AveragePool"), "ceil_mode"),
    Convention(
        "count_include_pad", "AvgPool", "count_include_pad / exclusive",
        "count_include_pad=True: padding counts in the average",
        "exclusive=True: padding does not count", "Paddle's exclusive is not torch's count_include_pad.",
        ("AveragePool",), "count_include_pad"),
    Convention(
        "resize_alignment", "Upsample, interpolate", "align_corners / align_corners, align_mode",
        "align_corners=False (half-pixel centres)",
        "align_corners=False with align_mode=0 (half-pixel centres, torch's); align_mode=1 is "
        "asymmetric", "Keep align_mode=0; pass torch's align_corners.", ("Resize",),
        "coordinate_transformation_mode"),
    Convention(
        "grid_sample_alignment", "grid_sample", "align_corners", "align_corners=False",
        "align_corners=True", "Pass align_corners explicitly on the Paddle side.", ("GridSample",),
        "align_corners"),
    Convention(
        "affine_grid_alignment", "affine_grid", "align_corners", "align_corners=False",
        "align_corners=True", "Pass align_corners explicitly on the Paddle side.",
        calls=("affine_grid",)),
    Convention(
        "smooth_l1", "SmoothL1Loss / SmoothL1Loss, HuberLoss", "beta / delta",
        "SmoothL1Loss(beta) is 0.5 x^2 / beta below beta and |x| - 0.5 beta above (Huber's loss "
        "divided by beta); HuberLoss(delta) is Huber's",
        "smooth_l1_loss(delta) is Huber's loss: 0.5 x^2 below delta, delta (|x| - 0.5 delta) above",
        "Port SmoothL1Loss(beta=b) as F.smooth_l1_loss(x, y, delta=b) / b, and HuberLoss(delta) "
        "as F.smooth_l1_loss(delta=delta)."),
    Convention(
        "label_smoothing", "CrossEntropyLoss / cross_entropy", "label_smoothing",
        "label_smoothing=0.0", "label_smoothing=0.0 (F.cross_entropy; or F.label_smooth with soft_label=True)",
        "Pass the same label_smoothing on both sides."),
    Convention(
        "label_smoothing_weight", "CrossEntropyLoss / cross_entropy", "weight with label_smoothing",
        "weights each class's log-probability in the smoothing term: (1 - e) nll + e / C sum_c "
        "-w_c log p_c", "weights each sample by its smoothed label's weight: sum_c label_c w_c "
        "times -sum_c label_c log p_c", "With both a weight and label smoothing, write torch's "
        "formula out on the Paddle side: (1 - e) F.nll_loss(log_p, y, weight) + e / C "
        "(-(log_p * w).sum(1)), reduced as torch reduces it."),
    Convention(
        "gaussian_nll_variance", "GaussianNLLLoss / gaussian_nll_loss", "var / variance",
        "clamps the variance at eps in place under no_grad: the gradient reaches the variance as "
        "if unclamped", "clips the variance under no_grad into a new tensor: the variance gets no "
        "gradient at all (though its documentation says otherwise)",
        "Where the variance is learned, write torch's formula out on the Paddle side: "
        "0.5 (log v + (x - y)^2 / v), v kept above eps with a clip whose gradient passes."),
    Convention(
        "ignore_index", "CrossEntropyLoss, NLLLoss", "ignore_index", "ignore_index=-100",
        "ignore_index=-100 (the same default)", "Pass the same ignore_index; ignored targets count "
        "in neither the loss nor the mean's denominator.",
        ("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"), "ignore_index"),
    Convention(
        "hardsigmoid_slope", "Hardsigmoid", "- / slope", "slope 1/6",
        "slope=0.1666667 (in float32 two units in the last place from 1/6: 1.8e-7 relative)",
        "Pass slope=1/6 for the same bits.", ("HardSigmoid",), "alpha"),
    Convention(
        "gelu_approximate", "GELU", "approximate", "approximate='none' (exact); 'tanh'",
        "approximate=False (exact); True is tanh", "torch's approximate='tanh' is Paddle's "
        "approximate=True."),
    Convention(
        "kl_div_reduction", "KLDivLoss / kl_div", "reduction",
        "reduction='mean' divides by every element ('batchmean' by the batch size)",
        "reduction='mean' likewise; 'batchmean' by the batch size",
        "Use reduction='batchmean' on both sides for the KL divergence."),
    Convention(
        "linear_weight", "Linear", "weight", "weight is [out_features, in_features]",
        "weight is [in_features, out_features]",
        "lossgraph pairs them transposed; a port copying weights must transpose them."),
)

BY_KEY = {convention.key: convention for convention in CONVENTIONS}


def in_code(code: str) -> list[Convention]:
    """The conventions of the functions a line of source code calls (``F.affine_grid(...)``)."""
    import re

    return [c for c in CONVENTIONS if any(re.search(rf"\b{name}\s*\(", code) for name in c.calls)]


def for_attribute(op_type: str, attribute: str) -> Convention | None:
    """The convention an ONNX op's attribute carries, if any."""
    return next((c for c in CONVENTIONS if c.attribute == attribute and op_type in c.ops), None)
