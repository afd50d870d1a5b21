"""Logistic regression over n-grams scaled by their log-count ratio (Wang & Manning, "Baselines
and Bigrams", ACL 2012: the NB-weighted regression of their NBSVM).

Each class is told from the rest by a regression of its own. The n-grams a message has (0/1)
are weighted by how much likelier each is in that class's messages than in the others',
``r = log((p / |p|) / (q / |q|))`` with one count added to each, and the weighted vector is
brought to unit length; the other columns (VADER's scores, the rules' conditions) are used as
they come. With 2,000 labels this ranked what needs us better than the same regression over
unit-length n-gram counts: at the threshold that tickets 90% of complaints, 24.5% and 27.0% of
non-complaints against 29.7% and 34.3%; at 90% of negative tweets, 14.1% and 16.0% of positive
ones against 17.0% and 16.9% (bench/triage_variants.py, seeds 7 and 9).

The class probabilities are a softmax of the classes' margins (a sigmoid for two classes). A
margin is computed without building the weighted matrix: for a 0/1 row ``x`` it is
``x·(r∘w) / sqrt(x·r²) + rest·w' + b``, every class's three parts in one sparse product.

Imported where a model is trained or read: scikit-learn is slow to import.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin

from socialcrm.compact_fit import CompactLogisticRegression


class ScaledLogisticRegression(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """One regression per class (one for two classes) over its log-count-ratio weighted
    n-grams, the first ``scaled`` columns, and the other columns as they are. The n-gram
    columns hold 0 or 1 (``triage.features`` makes them so for a scaled model), in training
    and in reading alike.

    After ``fit``: ``classes_``; ``ratio_`` (one row of ``scaled`` ratios per regression);
    ``coef_`` and ``intercept_`` as ``LogisticRegression`` lays them out (one row for two
    classes, one per class otherwise), over the weighted columns and the others.
    """

    def __init__(
        self,
        scaled: int = 0,
        C: float = 1.0,
        alpha: float = 1.0,
        max_iter: int = 500,
        tol: float = 1e-3,
    ) -> None:
        self.scaled = scaled
        self.C = C
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: Any, y: Any) -> ScaledLogisticRegression:
        matrix = sp.csr_matrix(X, dtype=np.float64)
        labels = np.asarray(y)
        self.classes_ = np.unique(labels)
        if len(self.classes_) < 2:
            raise ValueError("needs at least two classes")
        grams, rest = matrix[:, : self.scaled], matrix[:, self.scaled :]
        ones = self.classes_[1:] if len(self.classes_) == 2 else self.classes_
        ratios, coefs, intercepts = [], [], []
        for c in ones:
            mine = labels == c
            p = self.alpha + np.asarray(grams[mine].sum(axis=0)).ravel()
            q = self.alpha + np.asarray(grams[~mine].sum(axis=0)).ravel()
            ratio = np.log((p / p.sum()) / (q / q.sum()))
            weighted = grams @ sp.diags(ratio)
            norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
            weighted = sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ weighted
            clf = CompactLogisticRegression(
                C=self.C, max_iter=self.max_iter, tol=self.tol, class_weight="balanced"
            )
            clf.fit(sp.hstack([weighted, rest]).tocsr(), mine)
            ratios.append(ratio)
            coefs.append(clf.coef_[0])
            intercepts.append(clf.intercept_[0])
        self.ratio_ = np.vstack(ratios)
        self.coef_ = np.vstack(coefs)
        self.intercept_ = np.asarray(intercepts, dtype=np.float64)
        self.n_features_in_ = matrix.shape[1]
        return self

    def decision_function(self, X: Any) -> NDArray[np.float64]:
        """Each regression's margin for each row (one column per regression)."""
        k = len(self.intercept_)
        # One product gives, per regression, the weighted grams' sum, their squared length,
        # and the other columns' part.
        parts = sp.csr_matrix(X, dtype=np.float64) @ self._packed()
        numerators, squares, rest = parts[:, :k], parts[:, k : 2 * k], parts[:, 2 * k :]
        norms = np.sqrt(squares)
        out = numerators / np.where(norms > 0, norms, 1.0) + rest + self.intercept_
        return np.asarray(out, dtype=np.float64)

    def _packed(self) -> NDArray[np.float64]:
        """The columns ``decision_function`` multiplies by: ratio times weight and ratio
        squared over the n-grams, the weights over the rest (made once a fit or a load)."""
        made_for = getattr(self, "_packed_for", (None, None))
        if made_for[0] is not self.ratio_ or made_for[1] is not self.coef_:
            ratio = np.asarray(self.ratio_, dtype=np.float64)
            coef = np.asarray(self.coef_, dtype=np.float64)
            n = self.scaled
            packed = np.zeros((coef.shape[1], 3 * len(ratio)))
            packed[:n, : len(ratio)] = (ratio * coef[:, :n]).T
            packed[:n, len(ratio) : 2 * len(ratio)] = (ratio * ratio).T
            packed[n:, 2 * len(ratio) :] = coef[:, n:].T
            self._packed_cols, self._packed_for = packed, (self.ratio_, self.coef_)
        cols: NDArray[np.float64] = self._packed_cols
        return cols

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        margins = self.decision_function(X)
        if len(self.classes_) == 2:
            yes = 1.0 / (1.0 + np.exp(-margins[:, 0]))
            return np.column_stack([1.0 - yes, yes])
        e = np.exp(margins - margins.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    def predict(self, X: Any) -> NDArray[Any]:
        return np.asarray(self.classes_[self.predict_proba(X).argmax(axis=1)])
