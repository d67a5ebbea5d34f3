"""The recipes shipped with the package: find them by name, describe, render and copy them.

A recipe is a config file under this package, named by its path without `.yaml`
(`supervised_finetuning/lora/arc`). Files and folders whose name starts with `_` are shared bases that recipes
`extends:`; they are not recipes themselves. A recipe's description is the comment block at the top of its file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llm_finetuning.errors import ConfigError

SUFFIX = ".yaml"
# Top-level sections in the order the schema presents them, so a rendered recipe reads like a written one.
SECTION_ORDER = ("model", "adapter", "data", "method", "training", "eval", "tracking", "output_dir")


@dataclass(frozen=True)
class Recipe:
    """One shipped recipe: its name and the file that holds it."""

    name: str
    path: Path

    @property
    def kind(self) -> str:
        """`train` (a training config), `generate` (a `llmft data generate` config) or `stages` (a chain)."""
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return "train"
        if isinstance(data, dict) and "stages" in data:
            return "stages"
        if isinstance(data, dict) and "task" in data and "output" in data:
            return "generate"
        return "train"

    @property
    def description(self) -> str:
        """The comment block at the top of the file, without the `#` markers."""
        lines: list[str] = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            lines.append(line[1:].removeprefix(" "))
        return "\n".join(lines).strip()

    @property
    def summary(self) -> str:
        """The first sentence of the description (what the recipe trains)."""
        text = " ".join(self.description.split())
        end = text.find(". ")
        return text if end < 0 else text[: end + 1]


def recipes_root() -> Path:
    """The folder holding the recipes (inside the installed package)."""
    return Path(str(resources.files(__package__)))


KINDS = ("train", "generate", "stages")


def all_recipes(kind: str | None = "train") -> list[Recipe]:
    """The shipped recipes of one kind (`train` by default: what `llmft train` runs as one run; `generate`,
    `stages`), or of every kind when `kind` is None; sorted by name."""
    root = recipes_root()
    found = []
    for path in root.rglob(f"*{SUFFIX}"):
        relative = path.relative_to(root)
        if any(part.startswith("_") for part in relative.parts):
            continue
        recipe = Recipe(relative.with_suffix("").as_posix(), path)
        if kind is None or recipe.kind == kind:
            found.append(recipe)
    return sorted(found, key=lambda r: r.name)


def normalise(name: str) -> str:
    """`recipes/supervised_finetuning/lora/arc.yaml` and `supervised_finetuning\\lora\\arc` -> the recipe name."""
    name = name.strip().replace("\\", "/").strip("/")
    name = name.removeprefix("recipes/").removesuffix(SUFFIX)
    return name


def find_recipe(name: str) -> Recipe | None:
    """The recipe called `name`, or None."""
    wanted = normalise(name)
    return next((recipe for recipe in all_recipes(None) if recipe.name == wanted), None)


def closest_names(name: str, count: int = 3) -> list[str]:
    """Recipe names that look like `name`: close spellings first, then names sharing its last parts."""
    wanted = normalise(name)
    names = [recipe.name for recipe in all_recipes(None)]
    close = difflib.get_close_matches(wanted, names, n=count, cutoff=0.5)
    tail = wanted.rsplit("/", 1)[-1]
    close += [n for n in names if n not in close and (n.endswith(f"/{wanted}") or n.endswith(f"/{tail}"))]
    return close[:count]


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name fails with the closest names."""
    recipe = find_recipe(name)
    if recipe is None:
        raise ConfigError(not_found_message(name))
    return recipe


def not_found_message(name: str, as_file: bool = False) -> str:
    """What to say when `name` is neither a config file (when `as_file`) nor a recipe."""
    close = closest_names(name)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    what = f"Config file not found: {name}, and no recipe has that name." if as_file else f"No recipe `{name}`."
    return f"{what}{hint} `llmft recipes list` shows every recipe."


def merged(recipe: Recipe) -> dict[str, Any]:
    """The recipe's keys with its `extends:` chain merged in (no defaults filled), sections in schema order."""
    from llm_finetuning.config.loading import load_raw  # the loader imports this module for names

    data, _ = load_raw(recipe.path)
    if recipe.kind != "train":
        data = _absolute_files(data, recipe.path.parent)
    ordered = {key: data[key] for key in SECTION_ORDER if key in data}
    ordered.update({key: value for key, value in data.items() if key not in ordered})
    return ordered


def _absolute_files(value: Any, base: Path) -> Any:
    """Generation and stage recipes name files shipped beside them (seed prompts, a constitution): a copy of the
    recipe elsewhere must still find them, so such relative names become absolute."""
    if isinstance(value, dict):
        return {key: _absolute_files(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [_absolute_files(item, base) for item in value]
    if isinstance(value, str) and Path(value).suffix and not Path(value).is_absolute() and (base / value).is_file():
        return str((base / value).resolve())
    return value


def render(recipe: Recipe) -> str:
    """A self-contained YAML file for the recipe: its description as comments, then every key it sets."""
    header = "".join(f"# {line}".rstrip() + "\n" for line in recipe.description.splitlines())
    origin = f"# (recipe `{recipe.name}` of llm-finetuning, `extends:` merged in)\n"
    body = yaml.safe_dump(merged(recipe), sort_keys=False, allow_unicode=True, width=100)
    return f"{header}{origin}{body}"


def copy_recipe(name: str, destination: str | Path, overwrite: bool = False) -> Path:
    """Write the self-contained recipe to `destination` (a file, or a folder that gets `<last part>.yaml`)."""
    recipe = get_recipe(name)
    target = Path(destination)
    if target.is_dir() or str(destination).endswith(("/", "\\")):
        target = target / f"{recipe.name.rsplit('/', 1)[-1]}{SUFFIX}"
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; choose another destination or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(recipe), encoding="utf-8")
    return target
