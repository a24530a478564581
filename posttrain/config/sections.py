"""The base of every config section and what is asked of a section as a whole.

:class:`Section` forbids unknown keys, so a typo in a recipe is an error that names the key instead of a
silently ignored setting, and refuses infinite or NaN numbers; :func:`changed_keys` lists the keys of a section
that differ from its defaults (how :class:`posttrain.config.run.RunConfig` finds settings the method does not use).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, and no number may be infinite or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def changed_keys(section: Section, prefix: str) -> list[str]:
    """The dotted keys of ``section`` whose values differ from its class's defaults."""
    default = type(section)().model_dump(mode="json")
    return [f"{prefix}.{key}" for key, value in section.model_dump(mode="json").items() if value != default.get(key)]
