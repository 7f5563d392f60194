"""Type stubs of the native module gclip._gclip (the Rust half of the package)."""

from os import PathLike
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

DEFAULT_MODEL: str
__version__: str

class GclipError(Exception):
    """An error from gclip, with gclip's message."""

ImageItem = tuple  # ("file", path) | ("bytes", data, name) | ("pixels", mode, w, h, data, palette, transparency)

class Model:
    logit_scale: float
    embed_dim: int
    context_length: int
    image_size: int
    precision: str
    batch_size: int
    name: str
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> npt.NDArray[np.float32]: ...
    def pack_f32_weights(self) -> int: ...
    def encode_image_items(
        self, items: Sequence[Any], normalize: bool = True
    ) -> tuple[npt.NDArray[np.float32], list[tuple[int, str]]]: ...
    def tokenize(self, texts: Sequence[str]) -> npt.NDArray[np.int64]: ...
    def preprocess_items(
        self, items: Sequence[Any]
    ) -> tuple[npt.NDArray[np.float32], list[tuple[int, str]]]: ...
    def classify_items(
        self,
        items: Sequence[Any],
        labels: Sequence[str],
        templates: Union[None, str, Sequence[str]] = None,
        logit_scale: Optional[float] = None,
    ) -> tuple[npt.NDArray[np.float32], list[tuple[int, str]]]: ...

def load(
    model: str, arch: Optional[str] = None, precision: str = "fp32", batch_size: int = 32
) -> Model: ...
def set_threads(threads: int) -> int: ...
def eval_ranking(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    cutoffs: Optional[Sequence[int]] = None,
) -> dict[str, float]: ...
def train(
    config_path: Optional[str] = None,
    config_json: Optional[str] = None,
    overrides: Sequence[str] = ...,
    output: Optional[str] = None,
    resume: Optional[str] = None,
    resume_newest: bool = False,
    on_event: Optional[Callable[[dict[str, Any]], Any]] = None,
) -> tuple[int, Optional[PathLike[str]], PathLike[str], bool]: ...

class Collection:
    path: Union[str, PathLike[str]]  # a Milvus address is a str
    closed: bool
    @staticmethod
    def create(
        path: Union[str, PathLike[str]],
        model: str,
        arch: Optional[str] = None,
        precision: str = "fp32",
        embed: str = "image",
        image_fields: Sequence[str] = ...,
    ) -> Collection: ...
    @staticmethod
    def open(path: Union[str, PathLike[str]]) -> Collection: ...
    def close(self) -> None: ...
    def add_json(self, documents: Sequence[str], base: str, batch_size: int = 64) -> str: ...
    def search_json(
        self,
        parts: Sequence[tuple[str, Any, float]],
        filter: Optional[str] = None,
        limit: int = 10,
        offset: int = 0,
        exact: bool = False,
        hybrid: bool = False,
        lexical: bool = False,
        fusion: str = "rrf",
    ) -> str: ...
    def delete(self, ids: Sequence[str]) -> int: ...
    def update_json(self, id: str, patch: str, base: str) -> bool: ...
    def get_json(self, id: str) -> Optional[str]: ...
    def info_json(self) -> str: ...
    def __len__(self) -> int: ...
