"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, docstrings are descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def conflict(a: str, b: str, why: str = "") -> ValueError:
    return ValueError(f"`{a}` and `{b}` cannot both be set{why}. Choose one.")
