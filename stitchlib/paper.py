"""The numbers the paper reports, each with where it comes from and the paper's own words.

Claims take their thresholds from here, at every profile: no threshold is widened for a
smaller profile (weak models make a claim fail or come out inconclusive, which is then the
result). Figures draw these values as reference lines.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["REFERENCE", "reference_table"]

# key: (value, unit, where in the paper, the paper's words)
REFERENCE: dict[str, tuple] = {
    "close": (3.0, "points", "Table 1; Section 4 (Fig. 2A)",
              "Stitching [different initialization]: Close (up to 3% error). For all layers i, the test error of "
              "the stitched model S_i is close to the error of the base models."),
    "ssl_cifar": (3.0, "points", "Section 5; Appendix B.2.2 (Fig. 6)",
                  "We find that the CKA varies between 0.35-0.9 for different layers, while stitching gets maximum "
                  "stitching penalty of 3%."),
    "ssl_imagenet": (5.0, "points", "Table 1; Section 5 (Fig. 2B)",
                     "Stitching [self-supervision]: Close (up to 5% error). Figure 2B shows that the SSS trained "
                     "networks are stitching connected at all layers to the E2E network."),
    "label_early": (3.0, "points", "Section 5 (Fig. 3A); Table 1's 'close' bound",
                    "We find that even with poor label quality, the first half of layers in the 'weak' model are "
                    "'as good as' layers in the standard model (with the exception of the weak network trained on "
                    "100% noisy labels)."),
    "random_early": (3.0, "points", "Appendix B.2.1 (Figs. 2A, 5); Table 1's 'close' bound",
                     "These plots show that the early layers of the model have low stitching penalty, implying that "
                     "the early layers behave similarly to a randomly initialized network."),
    "random_late": (3.0, "points", "Appendix B.2.1 (Fig. 2A); Table 1's 'close' bound",
                    "To confirm that our stitching layer is not performing learning, we stitch a randomly "
                    "initialized untrained network to a trained top model."),
    "better": (0.0, "points", "Section 6 (Figs. 2C, 3C)",
               "the better representation trained with 25K samples can simply be 'plugged in' to the model trained "
               "with fewer samples, and this improves the performance of the stitched network relative to the 10K "
               "network. [...] 'better' models with higher width models can be stitched to those with lower width "
               "and improve performance, but not vice versa."),
    "training_time": (0.0, "points", "Section 6; Fig. 3B caption",
                      "Representations at different epochs during training are stitching compatible and early layer "
                      "converge faster."),
    "freeze": (3.0, "points", "Appendix B.4 (Fig. 9)",
               "As we can see, this network obtains good performance (up to ≈3%). [Section 6: within 2% accuracy "
               "of the original network.]"),
    "kernel": (3.0, "points", "Appendix B.1 (Fig. 4); Table 1's 'close' bound",
               "We find that kernel size has minimal impact on the test error of the stitched network."),
    "finetune": (0.0, "points", "Appendix B.3 (Fig. 8)",
                 "We now show that finetuning can overestimate the similarity between representations compared to "
                 "model stitching."),
    "cka_ssl": (0.0, "CKA", "Appendix B.2.2 (Fig. 6)",
                "On the other hand, CKA shows that the SimCLR representations can differ a fair bit from the E2E "
                "networks."),
    "cka_ssl_range": ("0.35-0.9", "CKA", "Section 5", "the CKA varies between 0.35-0.9 for different layers"),
    "cka_width_range": ("0.7-0.9", "CKA", "Section 6; Appendix B.2.3 (Fig. 7)",
                        "The CKA between representations with 0.25x and 2x width multiplier is in the range 0.7-0.9"),
    "cka_samples_low": (0.0, "CKA", "Appendix B.2.3 (Fig. 7)",
                        "We compare the CKA for a network trained with 5K samples with a network trained with 25K "
                        "samples. The CKA can go as low as 0."),
    "freeze_main": (2.0, "points", "Section 6",
                    "... to obtain a network within 2% accuracy of the original network."),
    "useless_cka": (0.0, "CKA", "Section 3 (Ignoring spurious features)",
                    "suppose we augment a representation by concatenating 1000 'useless' coordinates, with random "
                    "gaussian features [...]. This would reduce the CKA, but [it] is not different from [the "
                    "representation] in a meaningful way."),
    "useless_stitch": (3.0, "points", "Section 3 (Ignoring spurious features); Table 1's 'close' bound",
                       "Model-stitching resolves this, since we can stitch [the augmented representation] in place "
                       "of [the original] by simply throwing away the useless coordinates."),
    # "Does not affect": zero, up to the rounding of float64 sums in a different order.
    "permuted_cka": (1e-6, "CKA", "Section 3 (Invariance); 0 up to float64 rounding",
                     "randomly permuting the order of pixels (either at the input or in the latents) is an "
                     "orthogonal transform, and thus does not affect the CKA."),
    "permuted_stitch": (0.0, "points", "Section 3 (Invariance)",
                        "our choice of using a 1x1 convolutional stitcher yields much weaker invariance than general "
                        "orthogonal transforms- and thus, model stitching can predict that shuffling pixels leads "
                        "to a 'worse' representation."),
}


def reference_table() -> pd.DataFrame:
    """The paper's numbers as a table: key, value, unit, where, quote."""
    return pd.DataFrame([dict(key=k, value=v, unit=u, where=w, quote=q) for k, (v, u, w, q) in REFERENCE.items()])


def paper_value(key: str):
    return REFERENCE[key][0]


def paper_note(key: str) -> str:
    """Short form for a claims table's "paper" column: the value and where it comes from."""
    value, unit, where, _ = REFERENCE[key]
    return f"{value} {unit} ({where})" if unit == "points" else f"{value} ({where})"
