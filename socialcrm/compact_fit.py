"""A logistic regression fitted on the columns its training data uses.

The triage features are hashed into some 150,000 columns, of which a few thousand labelled
messages touch a fraction. L-BFGS works on dense vectors as wide as the coefficients, so on
a small set nearly all of its time went to columns no message has. A column no training row
touches has a zero gradient at the start and stays at zero under the L2 penalty (every step
is a combination of gradients), so fitting on the used columns alone and putting the result
back in place is the same model, found in a fraction of the time.

Imported where a model is trained: scikit-learn is slow to import.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression


class CompactLogisticRegression(LogisticRegression):  # type: ignore[misc]
    """``LogisticRegression`` whose ``fit`` solves only for the columns the rows use; its
    coefficients keep the full width, zero elsewhere, so it predicts like any other."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> CompactLogisticRegression:
        if self.warm_start:
            # A warm start goes on from coefficients as wide as the matrix: the plain fit.
            super().fit(X, y, sample_weight)
            return self
        matrix = sp.csr_matrix(X)
        width = matrix.shape[1]
        # Rows with no feature at all (texts with nothing to read) still fit, as the plain
        # regression does: on one column of zeros, which keeps its zero coefficient.
        used = np.unique(matrix.indices) if matrix.nnz else np.zeros(1, dtype=np.int32)
        super().fit(matrix[:, used], y, sample_weight)
        solved: np.ndarray[Any, Any] = self.coef_  # type: ignore[has-type]
        coef = np.zeros((solved.shape[0], width), dtype=solved.dtype)
        coef[:, used] = solved
        self.coef_ = coef
        self.n_features_in_ = width
        return self
