"""The base of every config section."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are errors; assignments are validated too; every float must be finite
    (``inf`` or ``nan`` is never a meaningful rate, time or step size)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
