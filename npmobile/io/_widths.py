"""Which width multiplier built these tensors? Shared by the Keras and torchvision importers.

Neither a torchvision state_dict nor a Keras weights file stores alpha; only the channel counts it
produced. Channel counts are rounded (to an int in V1, to a multiple of 8 in V2), so several alphas
can give the same network: any of them is right, since the graph depends on alpha only through
those counts. We prefer, in order, the alpha the file names (Keras' model name), the published
alphas, then the shortest decimal near an estimate, and keep the first whose graph needs exactly
the shapes found.
"""

from ..architectures import PUBLISHED_ALPHAS


def _near(estimate):
    """Decimals within 10% of the estimate: two-place ones first, each group nearest first."""
    lo, hi = int(estimate * 900), int(estimate * 1100) + 2
    grid = [k / 1000 for k in range(max(lo, 1), hi)]
    return sorted(grid, key=lambda a: (round(a, 2) != a, abs(a - estimate)))


def fit_alpha(build, shapes, arch, estimate, hint=None):
    """The graph `build(alpha)` whose param_shapes() equal `shapes` ({key: shape}), trying `hint`,
    the standard alphas, then decimals near `estimate`. When none fits (the tensors are not those
    of any alpha), returns the graph for hint or the rounded estimate, so that check_params names
    every tensor that does not fit it."""
    seen = set()
    for alpha in ([hint] if hint else []) + list(PUBLISHED_ALPHAS[arch]) + _near(estimate):
        if alpha in seen or alpha <= 0:
            continue
        seen.add(alpha)
        graph = build(alpha)
        if graph.param_shapes() == shapes:
            return graph
    return build(hint or max(round(estimate, 2), 0.01))
