"""The HTTP service's request and response bodies (the OpenAPI schema shows them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --------------------------------------------------------------------------------------------------
# request and response bodies


class ExtractInput(BaseModel):
    """One input: text (or a dict of template variables), an image or a PDF, base64-encoded. Files on the
    server's disk are not readable through the API."""

    model_config = ConfigDict(extra="forbid")

    text: str | dict[str, str | int | float | bool | None] | None = Field(
        None, description="the document, or a dict of template variables"
    )
    image_base64: str | None = Field(None, description="an image (PNG, JPEG, GIF, WebP), base64 or a data: URL")
    pdf_base64: str | None = Field(None, description="a PDF, base64")
    pdf_mode: Literal["auto", "text", "images"] | None = Field(None, description="text layer or page images")
    pdf_dpi: int | None = Field(None, ge=18, le=600, description="resolution of rendered PDF pages (images mode)")
    max_pdf_pages: int | None = Field(None, ge=1, description="read only the first N pages of the PDF")
    image_mime: str | None = Field(
        None, pattern=r"^image/[A-Za-z0-9.+-]{1,64}$", description="the image's MIME type, when not sniffable"
    )
    key: str | None = Field(None, max_length=256, description="routing key (sticky variant of an A/B prompter)")

    @model_validator(mode="after")
    def _has_input(self) -> ExtractInput:
        if self.text is None and self.image_base64 is None and self.pdf_base64 is None:
            raise ValueError("nothing to extract from: give text, image_base64 or pdf_base64")
        return self


Unit = Annotated[float, Field(ge=0.0, le=1.0)]
#: a number every field must reach, or field path -> number ("*": every field not named)
MinConfidence = Unit | dict[str, Unit] | None
_MIN_CONFIDENCE_DOC = (
    "refuse (422) an answer with a field whose confidence is lower: a number for every field, or a map of "
    "field paths to numbers ('*' for the fields not named), e.g. {\"total\": 0.9, \"*\": 0.6}"
)


class ExtractRequest(ExtractInput):
    min_confidence: MinConfidence = Field(None, description=_MIN_CONFIDENCE_DOC)


class UsageOut(BaseModel):
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    cost_usd: float | None


class ErrorOut(BaseModel):
    """An error: its type (``LowConfidence``, ``ExtractionError``, ``LMError``, ``ConfigurationError``...) and
    message; with the confidence and the refused result for ``LowConfidence``."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    confidence: float | None = None
    min_confidence: float | dict[str, float] | None = None
    fields: dict[str, float] | None = Field(None, description="LowConfidence: the fields below their threshold")
    attempts: int | None = None
    lm_status: int | None = None


