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
``x·(r∘w) / sqrt(x·r²) + rest·w' + b``, two sparse products per class.

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
    n-grams, the first ``scaled`` columns, and the other columns as they are.

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
        grams = _present(matrix[:, : self.scaled])
        rest = matrix[:, self.scaled :]
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
        matrix = sp.csr_matrix(X, dtype=np.float64)
        grams = _present(matrix[:, : self.scaled])
        rest = matrix[:, self.scaled :]
        ratio = np.asarray(self.ratio_, dtype=np.float64)
        coef = np.asarray(self.coef_, dtype=np.float64)
        weights = coef[:, : self.scaled]
        numerators = grams @ (ratio * weights).T
        norms = np.sqrt(grams @ (ratio * ratio).T)
        scaled = numerators / np.where(norms > 0, norms, 1.0)
        out = scaled + rest @ coef[:, self.scaled :].T + self.intercept_
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        margins = self.decision_function(X)
        if len(self.classes_) == 2:
            yes = 1.0 / (1.0 + np.exp(-margins[:, 0]))
            return np.column_stack([1.0 - yes, yes])
        e = np.exp(margins - margins.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)

    def predict(self, X: Any) -> NDArray[Any]:
        return np.asarray(self.classes_[self.predict_proba(X).argmax(axis=1)])


def _present(grams: sp.csr_matrix) -> sp.csr_matrix:
    """The n-grams a row has, as ones (hashed counts of two or more count once)."""
    out = sp.csr_matrix(grams, copy=True)
    out.data = np.ones_like(out.data)
    out.eliminate_zeros()
    return out
