"""Hashed n-gram features of a batch of texts, each n-gram source hashed once.

A scikit-learn ``HashingVectorizer`` splits every text into n-grams in Python and hashes each
one, batch after batch, although the texts of a stream repeat their words: most of a triage
model's reading went there. ``RememberingUnion`` gives the same matrix as the model's
``FeatureUnion.transform``, number for number, but remembers what each word (character
n-grams, which never cross a word) or each n-gram (word n-grams) hashes to, and builds the
batch's matrix from those rows with sparse products. A text step shared by several
vectorizers (folding handles and links) runs once per batch.

Anything the fast path does not know (another analyzer, weights, a transformer of another
kind) goes through the estimator's own ``transform``, so the figures never depend on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline

#: Distinct words or n-grams remembered per vectorizer before the memory starts afresh
#: (a few hundred bytes each: about 30 MB for the two vectorizers of a triage model, full).
MAX_REMEMBERED = 50_000


def _whole(unit: str) -> tuple[str]:
    """An analyzer that takes its input as one n-gram (to hash n-grams one by one)."""
    return (unit,)


def _joined(unit: str | tuple[str, ...]) -> tuple[str]:
    """An analyzer for one word n-gram given as its tokens, joined as scikit-learn joins them."""
    return (unit if isinstance(unit, str) else " ".join(unit),)


def _word_ngrams(
    preprocess: Callable[[str], str], tokenize: Callable[[str], list[str]], lo: int, hi: int
) -> Callable[[str], Iterable[Hashable]]:
    """The word n-grams of a text as the word analyzer has them: single tokens as strings,
    longer n-grams as tuples of tokens (unjoined)."""

    def units(doc: str) -> Iterable[Hashable]:
        tokens = tokenize(preprocess(doc))
        grams: list[Hashable] = list(tokens) if lo <= 1 else []
        for n in range(max(lo, 2), hi + 1):
            grams.extend(zip(*(tokens[i:] for i in range(n)), strict=False))
        return grams

    return units


class _Ids(dict[Hashable, int]):
    """Numbers units in the order they are first seen, and keeps the new ones apart."""

    def __init__(self) -> None:
        super().__init__()
        #: Units numbered since their rows were last added.
        self.new: list[Hashable] = []

    def __missing__(self, unit: Hashable) -> int:
        j = self[unit] = len(self)
        self.new.append(unit)
        return j


class _Rows:
    """What each unit (a word or an n-gram) hashes to: a sparse row per unit, in buffers,
    one after the other in the order of the units' numbers."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ids = _Ids()
        self.start = np.zeros(1025, dtype=np.int32)
        self.indices = np.zeros(1 << 16, dtype=np.int32)
        self.data = np.zeros(1 << 16, dtype=np.float64)
        #: Units whose rows are in the buffers.
        self.n = 0

    def clear(self) -> None:
        self.ids = _Ids()
        self.n = 0

    def add(self, units: list[Hashable], rows: csr_matrix) -> None:
        """Remember the rows of the units numbered last (``units``, in their order)."""
        n, filled = self.n, int(self.start[self.n])
        need = n + len(units)
        if need + 1 > len(self.start):
            self.start = np.resize(self.start, max(need + 1, 2 * len(self.start)))
        nnz = int(rows.indptr[-1])
        if filled + nnz > len(self.indices):
            size = max(filled + nnz, 2 * len(self.indices))
            self.indices = np.resize(self.indices, size)
            self.data = np.resize(self.data, size)
        self.start[n + 1 : need + 1] = rows.indptr[1:] + filled
        self.indices[filled : filled + nnz] = rows.indices[:nnz]
        self.data[filled : filled + nnz] = rows.data[:nnz]
        self.n = need

    def matrix(self, n_features: int, dtype: Any) -> csr_matrix:
        """Every remembered row, stacked in the units' order (on the buffers, not a copy)."""
        from scipy.sparse import csr_matrix

        n = self.n
        filled = int(self.start[n])
        return csr_matrix(
            (
                self.data[:filled].astype(dtype, copy=False),
                self.indices[:filled],
                self.start[: n + 1],
            ),
            shape=(n, n_features),
        )


class RememberingVectorizer:
    """A ``HashingVectorizer``'s transform, with the hashed rows of words or n-grams kept."""

    def __init__(self, vectorizer: HashingVectorizer, limit: int = MAX_REMEMBERED) -> None:
        from sklearn.base import clone

        self.vectorizer = vectorizer
        #: Signed hashes can cancel to a stored zero, which ``binary`` turns into a one; the
        #: sums here drop such zeros, so that case is the vectorizer's own.
        self.exact_zeros = bool(vectorizer.binary and vectorizer.alternate_sign)
        plain: dict[str, Any] = {"norm": None, "binary": False}
        if vectorizer.analyzer == "char_wb":
            # Character n-grams are taken word by word ("char_wb" pads each word and never
            # crosses a space): a text's counts are the sum of its words' counts.
            preprocess = vectorizer.build_preprocessor()
            self.units: Callable[[str], Iterable[Hashable]] = lambda doc: preprocess(doc).split()
            plain.update(lowercase=False, strip_accents=None, preprocessor=None)
        elif vectorizer.analyzer == "word" and vectorizer.get_stop_words() is None:
            # Word n-grams as tuples of tokens: no string is joined unless it is new.
            self.units = _word_ngrams(
                vectorizer.build_preprocessor(),
                vectorizer.build_tokenizer(),
                *vectorizer.ngram_range,
            )
            plain.update(analyzer=_joined)
        else:
            # Other analyzers: each n-gram of the text is a unit, hashed alone.
            self.units = vectorizer.build_analyzer()
            plain.update(analyzer=_whole)
        self._unit_rows = clone(vectorizer).set_params(**plain)
        self._rows = _Rows(limit)
        # Batches may be read in several threads at once (scoring in this process).
        self._lock = threading.Lock()

    def transform(self, docs: Sequence[str]) -> csr_matrix:
        """The vectorizer's matrix of ``docs``."""
        with self._lock:
            return self._transform(docs)

    def _numbered(self, docs: Sequence[str]) -> tuple[list[int], list[int]]:
        """Each doc's units by their numbers, one doc after the other, and where each ends."""
        number = self._rows.ids.__getitem__
        units = self.units
        cols: list[int] = []
        indptr = [0]
        for doc in docs:
            cols.extend(map(number, units(doc)))
            indptr.append(len(cols))
        return cols, indptr

    def _transform(self, docs: Sequence[str]) -> csr_matrix:
        from scipy.sparse import csr_matrix
        from sklearn.preprocessing import normalize

        vec = self.vectorizer
        if self.exact_zeros:
            return vec.transform(docs)
        if not all(isinstance(doc, str) for doc in docs):
            return vec.transform(docs)  # decoding bytes is the vectorizer's to do
        rows = self._rows
        cols, indptr = self._numbered(docs)
        if len(rows.ids) > rows.limit:
            # The memory starts afresh, with this batch's units alone.
            rows.clear()
            cols, indptr = self._numbered(docs)
        new = rows.ids.new
        if new:
            rows.add(new, self._unit_rows.transform(new).tocsr())
            rows.ids.new = []
        # 32-bit indices, as the remembered rows have: the product then converts neither.
        counts = csr_matrix(
            (
                np.ones(len(cols), dtype=vec.dtype),
                np.asarray(cols, dtype=np.int32),
                np.asarray(indptr, dtype=np.int32),
            ),
            shape=(len(docs), rows.n),
        )
        # The product has each column once per row; through CSC and back its columns come
        # out sorted, as the vectorizer's do (cheaper than sorting every row).
        product = counts @ rows.matrix(vec.n_features, vec.dtype)
        out: csr_matrix = product.tocsc().tocsr()
        if vec.binary:
            out.data.fill(1)
        if vec.norm is not None:
            out = normalize(out, norm=vec.norm, copy=False)
        return out


class RememberingUnion:
    """A ``FeatureUnion``'s transform: fast for text steps feeding hashing vectorizers.

    Also a ``Pipeline`` of stateless steps (``FunctionTransformer``s, such as one that
    normalises the texts once for every part) ending in the union: those steps run first.
    """

    def __init__(self, union: FeatureUnion | Pipeline) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.pipeline import FeatureUnion, Pipeline
        from sklearn.preprocessing import FunctionTransformer

        #: The estimator as given: its own transform is the fallback.
        self.estimator = union
        #: Stateless steps before the union.
        self.before: list[Any] = []
        #: Per part: its text function (or None) and its vectorizer; None: the part's own.
        self.parts: list[tuple[Callable[[Any], list[str]] | None, RememberingVectorizer] | None]
        self.parts = []
        if isinstance(union, Pipeline):
            *before, (_name, last) = union.steps
            self.before = [step for _n, step in before]
            stateless = all(
                isinstance(step, FunctionTransformer) and not step.validate for step in self.before
            )
            if not (stateless and isinstance(last, FeatureUnion)):
                self.union: Any = None
                self.fast = False
                return
            union = last
        self.union = union
        #: False: the union's own transform (weights, or parts that are not estimators).
        self.fast = union.transformer_weights is None and not any(
            isinstance(part, str) for _name, part in union.transformer_list
        )
        if not self.fast:
            return
        for _name, part in union.transformer_list:
            steps = [s for _n, s in part.steps] if isinstance(part, Pipeline) else [part]
            *before, last = steps
            fn = None
            if len(before) == 1 and isinstance(before[0], FunctionTransformer):
                t = before[0]
                if not t.kw_args and not t.validate:
                    fn = t.func
            usable = isinstance(last, HashingVectorizer) and last.input == "content"
            if usable and (fn is not None or not before):
                self.parts.append((fn, RememberingVectorizer(last)))
            else:
                self.parts.append(None)

    def transform(self, xs: list[Any]) -> csr_matrix:
        """The union's matrix of ``xs``."""
        from scipy import sparse

        if not self.fast:
            out: csr_matrix = self.estimator.transform(xs)
            return out
        for step in self.before:
            xs = step.transform(xs)
        texts: dict[Any, list[str]] = {}
        blocks = []
        for (_name, part), fast in zip(self.union.transformer_list, self.parts, strict=True):
            if fast is None:
                blocks.append(part.transform(xs))
                continue
            fn, vec = fast
            if fn is None:
                blocks.append(vec.transform(xs))
                continue
            docs = texts.get(fn)
            if docs is None:
                docs = texts[fn] = fn(xs)
            blocks.append(vec.transform(docs))
        # With every block in CSR, scipy stacks them side by side directly rather than
        # through COO and back: the same matrix, in less time.
        blocks = [
            b if sparse.issparse(b) and b.format == "csr" else sparse.csr_matrix(b) for b in blocks
        ]
        return sparse.hstack(blocks, format="csr")
