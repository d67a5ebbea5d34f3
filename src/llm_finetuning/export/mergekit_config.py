"""Read a mergekit YAML file, as shared on model cards, into llmft's merge config (`merge_config.MergeConfig`).

The translation keeps mergekit's meaning: per-model `parameters` become the model's options, top-level
`parameters` the defaults, `lambda` becomes `scale`, SLERP's `base_model` becomes the first model (t = 0).
A parameter the method does not read is dropped with a warning, as mergekit ignores it; a key whose effect
llmft cannot reproduce is an error naming it.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from llm_finetuning.errors import ConfigError
from llm_finetuning.export.merge_config import MODEL_OPTIONS, TOP_OPTIONS, MergeMethod, resolve_reference

logger = logging.getLogger(__name__)
KeyPath = tuple[str | int, ...]
Locations = dict[KeyPath, str]

SUPPORTED = MergeMethod.__args__  # type: ignore[attr-defined]
TOP_KEYS = ("merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source")
# Keys of mergekit's schema whose effect llmft does not reproduce, and what to do instead.
UNSUPPORTED = {
    "modules": "per-module merges (vision towers and the like) are not supported; merge a text-only model",
    "chat_template": "llmft does not set templates while merging; set `chat_template` on the merged tokenizer",
}
# mergekit's name of a shared parameter -> llmft's top-level key.
SHARED = {
    "t": "t",
    "lambda": "scale",
    "normalize": "normalize",
    "rescale": "rescale",
    "filter_wise": "filter_wise",
    "nuslerp_row_wise": "row_wise",
    "nuslerp_flatten": "flatten",
}
BOOLEANS = ("normalize", "rescale", "filter_wise", "row_wise", "flatten")
PER_MODEL = ("weight", "density", "gamma", "epsilon", "scale")
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64", "bf16": "bfloat16"}


class _Reader:
    def __init__(self, data: dict[str, Any], locations: Locations, source: Path) -> None:
        self.data, self.locations, self.source = data, locations, source
        self.out: dict[str, Any] = {}
        self.out_locations: Locations = {}
        self.method = ""

    def where(self, path: KeyPath) -> str:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.locations:
                return self.locations[path[:cut]]
        return str(self.source)

    def fail(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: `{_dotted(path)}`: {message}")

    def note(self, path: KeyPath, message: str, level: int = logging.WARNING) -> None:
        logger.log(level, "%s: `%s`: %s", self.where(path), _dotted(path), message)

    def put(self, target: KeyPath, value: Any, origin: KeyPath) -> None:
        node = self.out
        for part in target[:-1]:
            node = node[part]
        node[target[-1]] = value
        self.out_locations[target] = self.where(origin)

    def read(self) -> tuple[dict[str, Any], Locations]:
        self.read_method()
        for key in self.data:
            if key in UNSUPPORTED:
                raise self.fail((key,), UNSUPPORTED[key])
            if key not in (*TOP_KEYS, "tokenizer", "name"):
                close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
                hint = f" Did you mean `{close[0]}`?" if close else ""
                self.note((key,), f"not a mergekit key; ignored, as mergekit ignores it.{hint}")
        base = self.data.get("base_model")
        if base is not None and not isinstance(base, str):
            raise self.fail(("base_model",), "give the model as a path or a Hugging Face id (a string)")
        if base is not None:
            self.put(("base_model",), base, ("base_model",))
        if "models" in self.data:
            self.read_models()
        if "slices" in self.data:
            self.read_slices()
        self.read_parameters()
        self.read_dtype()
        self.read_tokenizer()
        self.place_base()
        return self.out, self.out_locations

    def read_method(self) -> None:
        method = self.data.get("merge_method")
        if method not in SUPPORTED:
            close = difflib.get_close_matches(str(method), SUPPORTED, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise self.fail(
                ("merge_method",), f"`{method}` is not supported; choose one of {', '.join(SUPPORTED)}.{hint}"
            )
        self.method = method
        self.put(("method",), method, ("merge_method",))

    def read_model(self, item: Any, path: KeyPath, target: KeyPath, slice_source: bool) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("model"), str):
            raise self.fail(path, "each entry needs `model:` with a path or a Hugging Face id (a string)")
        self.put(target, {"path": item["model"]}, (*path, "model"))
        if "@" in item["model"] and not Path(item["model"]).exists():
            raise self.fail((*path, "model"), "revisions (`@rev`) are not fetched; download it and give its path")
        if slice_source:
            if "layer_range" not in item:
                raise self.fail(path, "each slice source needs `layer_range: [first, last + 1]`")
            self.put((*target, "layer_range"), item["layer_range"], (*path, "layer_range"))
        for key in item:
            if key not in ("model", "parameters", "layer_range"):
                self.note((*path, key), "not a mergekit key; ignored, as mergekit ignores it")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise self.fail((*path, "parameters"), "must be a mapping of parameter names to values")
        allowed = MODEL_OPTIONS.get(self.method, frozenset())
        for name, value in parameters.items():
            origin = (*path, "parameters", name)
            if name in allowed:
                self.put((*target, name), value, origin)
            else:
                self.note(origin, _unused(name, self.method))

    def read_models(self) -> None:
        models = self.data["models"]
        if not isinstance(models, list):
            raise self.fail(("models",), "must be a list of `- model: ...` entries")
        self.out["models"] = [None] * len(models)
        for i, item in enumerate(models):
            self.read_model(item, ("models", i), ("models", i), slice_source=False)

    def read_slices(self) -> None:
        slices = self.data["slices"]
        if not isinstance(slices, list):
            raise self.fail(("slices",), "must be a list of `- sources: [...]` entries")
        self.out["slices"] = []
        for i, piece in enumerate(slices):
            if not isinstance(piece, dict) or not isinstance(piece.get("sources"), list):
                raise self.fail(("slices", i), "each slice needs `sources:`, a list of models with `layer_range`")
            for key in piece:
                if key in ("parameters", "base_model", "residual_weight"):
                    raise self.fail(("slices", i, key), "per-slice settings are not supported; set them at the top")
                if key != "sources":
                    self.note(("slices", i, key), "not a mergekit key; ignored, as mergekit ignores it")
            self.out["slices"].append({"sources": [None] * len(piece["sources"])})
            for j, item in enumerate(piece["sources"]):
                self.read_model(item, ("slices", i, "sources", j), ("slices", i, "sources", j), slice_source=True)

    def read_parameters(self) -> None:
        parameters = self.data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise self.fail(("parameters",), "must be a mapping of parameter names to values")
        allowed = TOP_OPTIONS.get(self.method, frozenset())
        for name, value in parameters.items():
            origin = ("parameters", name)
            if name == "int8_mask":
                self.note(origin, "ignored: in mergekit it only stores an internal mask in int8", logging.INFO)
                continue
            if name == "scale" and "scale" in MODEL_OPTIONS.get(self.method, ()):
                self.default_per_model("scale", value, origin)
                continue
            target = SHARED.get(name, name if name in PER_MODEL else None)
            if target is None or target not in allowed:
                self.note(origin, _unused(name, self.method))
                continue
            if target in BOOLEANS and not isinstance(value, bool):
                raise self.fail(origin, "must be true or false here (per-tensor values are not supported for it)")
            self.put((target,), value, origin)

    def default_per_model(self, name: str, value: Any, origin: KeyPath) -> None:
        """A top-level default of a per-model option llmft has no top-level key for (passthrough's `scale`)."""
        for entry in self.entries():
            entry[name] = _fallback(entry.get(name), value)
        self.out_locations[(name,)] = self.where(origin)

    def entries(self) -> list[dict[str, Any]]:
        if "models" in self.out:
            return list(self.out["models"])
        return [s for piece in self.out.get("slices", []) for s in piece["sources"]]

    def keep(self, prefix: KeyPath, indices: list[int]) -> None:
        """Keep the entries `indices` of the list at `prefix`, in that order, with their file locations."""
        node: Any = self.out
        for part in prefix:
            node = node[part]
        node[:] = [node[i] for i in indices]
        new_index = {old: new for new, old in enumerate(indices)}
        depth = len(prefix)
        moved: Locations = {}
        for path, where in list(self.out_locations.items()):
            if path[:depth] == prefix and len(path) > depth:
                del self.out_locations[path]
                if path[depth] in new_index:
                    moved[(*prefix, new_index[path[depth]], *path[depth + 1 :])] = where
        self.out_locations.update(moved)

    def read_dtype(self) -> None:
        key = "out_dtype" if self.data.get("out_dtype") else "dtype"
        value = self.data.get(key)
        if value is None:
            return
        name = str(value).removeprefix("torch.")
        if name not in DTYPES:
            raise self.fail((key,), f"`{value}` is not a floating-point type; use float32, float16 or bfloat16")
        self.put(("dtype",), DTYPES[name], (key,))

    def read_tokenizer(self) -> None:
        source = self.data.get("tokenizer_source")
        tokenizer = self.data.get("tokenizer")
        if tokenizer is not None:
            if not isinstance(tokenizer, dict):
                raise self.fail(("tokenizer",), "must be a mapping (`source: base`)")
            for key in tokenizer:
                if key != "source":
                    raise self.fail(("tokenizer", key), "added tokens and padding are not supported; remove it")
            if source is not None:
                raise self.fail(("tokenizer",), "`tokenizer` and `tokenizer_source` cannot both be set; choose one")
            source, origin = tokenizer.get("source"), ("tokenizer", "source")
        else:
            origin = ("tokenizer_source",)
        if source is None:
            return
        if not isinstance(source, str):
            raise self.fail(origin, "give `base`, `union` or a model's path")
        self.put(("tokenizer_source",), source, origin)

    def place_base(self) -> None:
        """Where mergekit's base model sits in llmft's layout, which depends on the method."""
        base = self.out.get("base_model")
        if base is None:
            return
        groups = [self.out["models"]] if "models" in self.out else [p["sources"] for p in self.out.get("slices", [])]
        folder = self.source.parent

        def is_base(entry: dict[str, Any]) -> bool:
            return resolve_reference(entry["path"], folder) == resolve_reference(base, folder)

        if self.method not in ("slerp", "linear", "passthrough"):
            if "models" in self.out:  # listed or not, the base is the base: llmft lists it once
                self.keep(("models",), [i for i, e in enumerate(self.out["models"]) if not is_base(e)])
            return

        present = all(any(is_base(e) for e in group) for group in groups)
        if self.method == "slerp":
            if not present:
                raise self.fail(("base_model",), "SLERP's base must be one of the two models (it is t = 0)")
            prefixes = [("models",)] if "models" in self.out else [("slices", i, "sources") for i in range(len(groups))]
            for prefix, group in zip(prefixes, groups, strict=True):
                order = sorted(range(len(group)), key=lambda i: not is_base(group[i]))  # the base first: t = 0
                self.keep(prefix, order)
        elif not present:
            raise self.fail(
                ("base_model",),
                f"`merge_method: {self.method}` has no base; mergekit would add it as one more input. List it "
                "among the models or remove `base_model`.",
            )
        del self.out["base_model"]
        self.out_locations.pop(("base_model",), None)


def _fallback(first: Any, second: Any) -> Any:
    """One setting giving `first`'s value where it has one and `second`'s elsewhere (mergekit's precedence)."""
    if first is None or first == []:
        return second
    if not isinstance(first, list | dict) or (isinstance(first, list) and not isinstance(first[0], dict)):
        return first  # a number or a gradient always has a value
    rest = second if isinstance(second, list) and second and isinstance(second[0], dict) else [{"value": second}]
    return [*(first if isinstance(first, list) else [first]), *rest]


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


def from_mergekit(data: dict[str, Any], locations: Locations, source: Path) -> tuple[dict[str, Any], Locations]:
    """The llmft merge config (raw, before validation) of a mergekit file, and where each of its keys came from."""
    return _Reader(data, locations, source).read()


def _unused(name: str, method: str) -> str:
    """The warning for a parameter the method does not read, with the likely name when it is a misspelling."""
    known = {*PER_MODEL, *SHARED, *BOOLEANS, "int8_mask", "t"}
    close = [] if name in known else difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return f"not used by `merge_method: {method}`; ignored, as mergekit ignores it.{hint}"
