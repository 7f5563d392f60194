"""gclip: CLIP and Generalized Contrastive Learning models from Python, run by gclip's Rust
engine on the CPU (no PyTorch needed).

    >>> import gclip
    >>> model = gclip.load("openai/clip-vit-base-patch32")
    >>> texts = model.encode_text(["a photo of a cat", "a photo of a dog"])   # [2, 512] float32
    >>> images = model.encode_image(["cat.jpg", open("dog.png", "rb").read()])
    >>> probs = model.classify(["cat.jpg"], ["cat", "dog"], templates="simple")

Images may be paths (``str`` or ``os.PathLike``), encoded files (``bytes``), numpy arrays
(``HxWx3`` RGB, ``HxWx4`` RGBA or ``HxW`` grey, ``uint8``) or PIL images (any mode Pillow
decodes files into: ``1``, ``L``, ``LA``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ``I;16``),
preprocessed exactly as the model's reference library does. Model work releases the GIL, so
threads embed in parallel.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

from . import _gclip
from ._gclip import DEFAULT_MODEL, GclipError, __version__

__all__ = [
    "DEFAULT_MODEL",
    "Collection",
    "GclipError",
    "Model",
    "eval_ranking",
    "load",
    "train",
    "__version__",
]

if TYPE_CHECKING:
    import numpy as np

# numpy is imported when a result is made, not by `import gclip`: its import costs more than
# gclip's own start-up (docs/BENCHMARKS.md, "Python"). No array can be passed in before the
# caller has imported numpy, so an input is recognised through `sys.modules` alone.
ImageLike = Union[str, "os.PathLike[str]", bytes, "np.ndarray", Any]


def _is_ndarray(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)

_ARRAY_MODES = {2: "L", 3: "RGB", 4: "RGBA"}


def _image_item(image: ImageLike, index: int) -> Any:
    """One image as the native module takes it: a tagged tuple, ``("error", reason)`` for an
    object that is no image (the native module reports it by index)."""
    if isinstance(image, (str, os.PathLike)):
        return ("file", os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(image), f"item {index} (bytes)")
    if _is_ndarray(image):
        import numpy as np

        if image.dtype != np.uint8:
            return ("error", f"numpy array of {image.dtype}, expected uint8")
        if image.ndim == 2:
            mode = "L"
        elif image.ndim == 3 and image.shape[2] in (3, 4):
            mode = _ARRAY_MODES[image.shape[2]]
        else:
            return ("error", f"numpy array of shape {image.shape}, expected HxW, HxWx3 or HxWx4")
        h, w = image.shape[:2]
        return ("pixels", mode, w, h, np.ascontiguousarray(image).tobytes(), None, None)
    if hasattr(image, "mode") and hasattr(image, "tobytes") and hasattr(image, "size"):
        return _pil_item(image)
    return ("error", f"{type(image).__name__} is not an image (path, bytes, numpy array or PIL image)")


def _pil_item(image: Any) -> Any:
    mode = image.mode
    w, h = image.size
    palette = None
    if mode == "1":
        # Pillow packs bilevel pixels 8 to a byte; gclip holds them as 0 or 255.
        data = image.convert("L").tobytes()
    elif mode == "I;16":
        data = image.tobytes("raw", "I;16")
    else:
        data = image.tobytes()
    if mode == "P":
        pal = image.getpalette()
        palette = bytes(pal if pal is not None else [])
    transparency = image.info.get("transparency")
    if isinstance(transparency, (list, tuple)) and len(transparency) != 3:
        transparency = None
    return ("pixels", mode, w, h, data, palette, transparency)


def _items(images: Iterable[ImageLike]) -> list:
    if isinstance(images, (str, bytes, os.PathLike)) or _is_ndarray(images) or hasattr(images, "mode"):
        raise TypeError("images must be a list of images, not a single image")
    return [_image_item(im, i) for i, im in enumerate(images)]


def _finish(rows: np.ndarray, errors: list, what: str, on_error: str):
    if on_error == "return":
        return rows, errors
    if on_error != "raise":
        raise ValueError(f'errors must be "raise" or "return", not {on_error!r}')
    if errors:
        lines = "\n".join(f"  [{i}] {e}" for i, e in errors)
        exc = GclipError(f"{len(errors)} of {len(rows)} {what} failed:\n{lines}")
        exc.errors = errors
        exc.result = rows
        raise exc
    return rows


class Model:
    """A CLIP / GCL model with its reference tokenizer and image preprocessing.

    Made by :func:`load`. Methods take lists and return numpy arrays, in input order.
    """

    def __init__(self, native: "_gclip.Model"):
        self._m = native

    def __repr__(self) -> str:
        return repr(self._m)

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)`` of the checkpoint, what CLIP multiplies cosines by."""
        return self._m.logit_scale

    @property
    def embed_dim(self) -> int:
        """The embedding dimension D."""
        return self._m.embed_dim

    @property
    def context_length(self) -> int:
        """Tokens per text."""
        return self._m.context_length

    @property
    def image_size(self) -> int:
        """Side of the square image the model takes."""
        return self._m.image_size

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``int8``."""
        return self._m.precision

    def pack_f32_weights(self) -> int:
        """Packs an fp32 model's weights for this CPU's fastest fp32 kernel now, as ``gclip
        serve`` does: for a long-lived process, called before its first embedding. A model
        loaded with the converted-weights cache (``~/.cache/gclip/converted`` or
        ``GCLIP_CONVERTED_CACHE``; on unless set to ``off``) has them packed already, mapped from
        the cache. Otherwise AVX2 CPUs read the weights in place (the packing's page faults would
        cost a one-shot script 0.1-2 s) and AVX-512 CPUs pack them at the first embedding.
        Returns how many weights are packed (0 for bf16 and int8 models, or without AVX2)."""
        return self._m.pack_f32_weights()

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embeds texts: float32 ``[N, D]``, L2-normalised unless ``normalize=False``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a string")
        return self._m.encode_text(list(texts), normalize)

    def encode_image(
        self, images: Iterable[ImageLike], normalize: bool = True, errors: str = "raise"
    ):
        """Embeds images: float32 ``[N, D]``, L2-normalised unless ``normalize=False``.

        An image that cannot be read does not stop the others. With ``errors="raise"`` (the
        default) a :class:`GclipError` names every failed item (index and reason) after the
        rest are embedded; its ``errors`` attribute lists ``(index, message)`` and its
        ``result`` holds the rows. With ``errors="return"`` the result is ``(rows, errors)``,
        rows of failed items being NaN.
        """
        rows, errs = self._m.encode_image_items(_items(images), normalize)
        return _finish(rows, errs, "images", errors)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids as the model receives them: int64 ``[N, context_length]``."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a string")
        return self._m.tokenize(list(texts))

    def preprocess(self, images: Iterable[ImageLike], errors: str = "raise"):
        """Pixels as the model receives them: float32 ``[N, 3, S, S]`` (normalised, CHW).
        Failed items behave as in :meth:`encode_image`."""
        rows, errs = self._m.preprocess_items(_items(images))
        return _finish(rows, errs, "images", errors)

    def classify(
        self,
        images: Iterable[ImageLike],
        labels: Sequence[str],
        templates: Union[None, str, Sequence[str]] = None,
        logit_scale: Optional[float] = None,
        errors: str = "raise",
    ):
        """Zero-shot classification: float32 ``[N, len(labels)]`` probabilities, each row the
        softmax of ``logit_scale * cos`` over the labels, in label order.

        ``templates``: None (each label is its own prompt), ``"simple"`` (7 templates) or
        ``"openai-imagenet"`` (80), or a list of templates with ``{}``; a class vector is the
        renormalised mean of its prompts. ``logit_scale`` replaces the checkpoint's (Marqo's GCL
        demo uses 10). Failed items behave as in :meth:`encode_image`.
        """
        if isinstance(labels, str):
            raise TypeError("labels must be a list of strings, not a string")
        if templates is not None and not isinstance(templates, str):
            templates = list(templates)
        rows, errs = self._m.classify_items(_items(images), list(labels), templates, logit_scale)
        return _finish(rows, errs, "images", errors)

    def similarity(
        self,
        images: Iterable[ImageLike],
        texts: Sequence[str],
        scores: str = "cosine",
        errors: str = "raise",
    ):
        """The ``[len(images), len(texts)]`` matrix of cosines between normalised embeddings
        (``scores="logits"``: times :attr:`logit_scale`, as CLIP's ``logits_per_image``;
        ``"probs"``: their softmax over each row). Failed images behave as in
        :meth:`encode_image` (NaN rows)."""
        if scores not in ("cosine", "logits", "probs"):
            raise ValueError(f'scores must be "cosine", "logits" or "probs", not {scores!r}')
        import numpy as np

        img, errs = self._m.encode_image_items(_items(images), True)
        txt = self.encode_text(texts)
        m = img @ txt.T
        if scores != "cosine":
            m = m * np.float32(self.logit_scale)
        if scores == "probs":
            e = np.exp(m - m.max(axis=1, keepdims=True))
            m = e / e.sum(axis=1, keepdims=True)
        return _finish(m.astype(np.float32, copy=False), errs, "images", errors)


def load(
    model: str,
    arch: Optional[str] = None,
    precision: str = "fp32",
    threads: Optional[int] = None,
    batch_size: int = 32,
) -> Model:
    """Loads a model.

    ``model``: a Hugging Face model id (``openai/clip-vit-base-patch32``,
    ``ORG/NAME@REVISION``; downloaded into the Hugging Face cache on first use, honouring
    ``HF_HOME``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_TOKEN``), a model directory
    (transformers or open_clip layout), or an open_clip checkpoint file with ``arch`` (a
    built-in name such as ``ViT-B-32`` or an open_clip config JSON).
    ``precision``: ``fp32`` (exact), ``bf16`` or ``int8``. ``threads``: CPU threads for the
    whole process, settable once, before the first model runs. ``batch_size``: items per
    forward pass (1 to 4096).
    """
    if threads is not None:
        _gclip.set_threads(int(threads))
    return Model(
        _gclip.load(os.fspath(model), arch=None if arch is None else os.fspath(arch),
                    precision=precision, batch_size=batch_size)
    )


class Collection:
    """A searchable collection of documents (a directory, or a collection on a Milvus server
    named by its address ``milvus://HOST:PORT/NAME``, see docs/MILVUS.md), as ``gclip
    index``/``add`` make.

    Documents are dicts: an ``id`` (else a hash of the document), text fields, image fields
    holding paths, numbers, tags (lists of strings) and booleans. One process has a collection
    open at a time: :meth:`close` it (or use it in a ``with`` block) to let another open it.
    """

    def __init__(self, native: "_gclip.Collection"):
        self._c = native

    def close(self) -> None:
        """Writes what is pending and releases the collection's files and model; later calls
        raise :class:`GclipError`. Closing twice does nothing."""
        self._c.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._c.closed

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def create(
        path: Union[str, "os.PathLike[str]"],
        model: str,
        arch: Optional[str] = None,
        precision: str = "fp32",
        embed: str = "image",
        image_fields: Sequence[str] = ("image",),
    ) -> "Collection":
        """Creates a collection in ``path`` (a directory, or a ``milvus://`` address) for
        ``model``, embedding the fields of ``embed`` (``"FIELD[:WEIGHT],…"``, e.g.
        ``"title:0.3,image:0.7"``); ``image_fields`` hold image paths, the other fields text.
        On a Milvus server, the ``GCLIP_MILVUS_*`` variables of the environment apply as for
        the command line (shards, partition key, token)."""
        return Collection(
            _gclip.Collection.create(
                os.fspath(path), os.fspath(model),
                arch=None if arch is None else os.fspath(arch),
                precision=precision, embed=embed, image_fields=list(image_fields),
            )
        )

    @staticmethod
    def open(path: Union[str, "os.PathLike[str]"]) -> "Collection":
        """Opens the collection in ``path`` (a directory, or a ``milvus://`` address)."""
        return Collection(_gclip.Collection.open(os.fspath(path)))

    @property
    def path(self) -> str:
        """The collection directory, or its Milvus address without the token (reopening
        it then needs ``GCLIP_MILVUS_TOKEN``)."""
        return os.fspath(self._c.path)

    @property
    def info(self) -> dict:
        """The model, embedding spec and creation time the collection records."""
        return json.loads(self._c.info_json())

    def __len__(self) -> int:
        return len(self._c)

    def add(
        self,
        documents: Iterable[dict],
        base: Union[None, str, "os.PathLike[str]"] = None,
        batch_size: int = 64,
        errors: str = "raise",
    ) -> dict:
        """Embeds and adds documents (an existing id is replaced), committed in batches.
        Relative image paths are resolved against ``base`` (default: the working directory).
        Returns the report (``written``, ``failed``: ``[label, error]`` pairs). A document that
        fails does not stop the others; with ``errors="raise"`` a :class:`GclipError` then
        lists the failures after the rest are written."""
        docs = [json.dumps(d) for d in documents]
        base = os.getcwd() if base is None else os.fspath(base)
        report = json.loads(self._c.add_json(docs, base, batch_size))
        if errors == "raise" and report["failed"]:
            lines = "\n".join(f"  {label}: {e}" for label, e in report["failed"])
            exc = GclipError(f"{len(report['failed'])} of {len(docs)} documents failed:\n{lines}")
            exc.report = report
            raise exc
        return report

    def search(
        self,
        q: Union[None, str, Sequence[tuple]] = None,
        image: Union[None, ImageLike, Sequence[tuple]] = None,
        like: Optional[str] = None,
        filter: Optional[str] = None,
        limit: int = 10,
        offset: int = 0,
        exact: bool = False,
        hybrid: bool = False,
        lexical: bool = False,
        fusion: str = "rrf",
    ) -> list:
        """Searches by text ``q``, an ``image`` (path or encoded bytes), or a document
        ``like`` this id; any of them may combine. ``q`` and ``image`` may also be lists of
        ``(value, weight)`` pairs (negative weights push away). ``filter`` as in
        ``gclip search --filter`` (``'price < 50 AND tags:summer'``). ``hybrid``: vector and
        BM25 results fused (``fusion="rrf"`` or ``"weighted"``); ``lexical``: BM25 alone, no
        model. Returns hits, best first: ``{"id", "score", "image", "fields"}``."""
        parts = []

        def weighted(value, kind_of):
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], tuple):
                for v, w in value:
                    parts.append((*kind_of(v), float(w)))
            else:
                parts.append((*kind_of(value), 1.0))

        if q is not None:
            weighted(q, lambda v: ("text", str(v)))
        if image is not None:
            weighted(image, lambda v: ("image_bytes", bytes(v)) if isinstance(
                v, (bytes, bytearray, memoryview)) else ("image", os.fspath(v)))
        if like is not None:
            parts.append(("document", str(like), 1.0))
        return json.loads(
            self._c.search_json(parts, filter, limit, offset, exact, hybrid, lexical, fusion)
        )

    def get(self, id: str) -> Optional[dict]:
        """The document ``{"id", "fields"}`` with this id, or None."""
        raw = self._c.get_json(str(id))
        return None if raw is None else json.loads(raw)

    def delete(self, ids: Union[str, Sequence[str]]) -> int:
        """Deletes documents by id; returns how many there were."""
        if isinstance(ids, str):
            ids = [ids]
        return self._c.delete([str(i) for i in ids])

    def update(
        self, id: str, fields: dict, base: Union[None, str, "os.PathLike[str]"] = None
    ) -> bool:
        """Sets fields of a document (``None`` removes one); the vector is recomputed when an
        embedded field changed, which is returned."""
        base = os.getcwd() if base is None else os.fspath(base)
        return self._c.update_json(str(id), json.dumps(fields), base)


def eval_ranking(
    qrels: dict, run: dict, cutoffs: Optional[Sequence[int]] = None
) -> dict:
    """Ranking metrics of ``run`` (``{query: {doc: score}}``) against ``qrels``
    (``{query: {doc: grade}}``), as ``pytrec_eval`` takes them: nDCG, MAP, recall, precision
    and MRR at GCL's cut-offs (or ``cutoffs``) and RBP, as ``gclip eval metrics ranking``."""
    return _gclip.eval_ranking(
        {str(q): {str(d): int(g) for d, g in docs.items()} for q, docs in qrels.items()},
        {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()},
        None if cutoffs is None else [int(c) for c in cutoffs],
    )


def _toml_value(value: Any) -> str:
    """An override's value as TOML: JSON's strings, numbers, booleans and lists are TOML's."""
    return json.dumps(value)


def train(
    config: Union[str, "os.PathLike[str]", dict],
    overrides: Union[None, dict, Sequence[str]] = None,
    output: Union[None, str, "os.PathLike[str]"] = None,
    resume: Union[bool, str, "os.PathLike[str]"] = False,
    callback: Optional[Any] = None,
) -> dict:
    """Trains a CLIP / GCL model as ``gclip train`` does, with the GIL released.

    ``config``: a TOML file (relative paths in it taken from its folder) or a dict of the same
    sections (``{"model": {...}, "data": {...}, "train": {...}}``, relative paths taken from
    the working directory); docs/TRAINING.md describes every option. ``overrides``:
    ``{"train.steps": 100, "loss.kind": "gcl"}`` or ``["train.steps=100", …]``, as ``--set``.
    ``output``: the run directory (``train.output``). ``resume``: True to continue from the
    run's newest checkpoint, or a checkpoint or run directory.

    ``callback(event)`` is called with a dict per step (``{"event": "step", "step", "loss",
    "lr", "logit_scale", …}``), evaluation (``"eval"``, ``"metrics"``) and checkpoint
    (``"checkpoint"``, ``"path"``); returning False stops the run after that step, with a
    checkpoint. So does Ctrl-C, raised as KeyboardInterrupt then. Returns ``{"steps_done",
    "last_checkpoint", "log", "stopped_early"}``.
    """
    if overrides is None:
        sets: list = []
    elif isinstance(overrides, dict):
        sets = [f"{k}={_toml_value(v)}" for k, v in overrides.items()]
    elif isinstance(overrides, str):
        raise TypeError("overrides must be a dict or a list of KEY=VALUE strings, not a string")
    else:
        sets = [str(s) for s in overrides]
    if isinstance(config, dict):
        path, config_json = None, json.dumps(config)
    else:
        path, config_json = os.fspath(config), None
    out = None if output is None else os.fspath(output)
    resume_from = None if resume is None or isinstance(resume, bool) else os.fspath(resume)
    steps, checkpoint, log, stopped = _gclip.train(
        config_path=path, config_json=config_json, overrides=sets, output=out,
        resume=resume_from, resume_newest=resume is True, on_event=callback,
    )
    return {
        "steps_done": steps,
        "last_checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "log": os.fspath(log),
        "stopped_early": stopped,
    }
