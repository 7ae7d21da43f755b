"""Record schemas of the three sample kinds (versioned), and the decoded-sample contract.

A shard sample is `<key>.json` (one record below, UTF-8 JSON) plus its images as
`<key>.img0.<ext>`, `<key>.img1.<ext>` ... kept in their original encoding; the record's
`images` lists those member names in order. The manifest states each split's kind and
`SCHEMA_VERSION`; readers refuse versions they do not know.

Kinds:
- "sft":        prompt (or messages), response, optional paraphrases
- "preference": prompt, chosen, rejected, optional paraphrases (SFT reads `chosen` as the
                response)
- "eval":       prompt, label harmful|benign, category, optional reference / chosen / rejected

Every record has `meta` (category, source, harmful flag; extra keys allowed).
`paraphrases` are alternative wordings of the prompt with the same meaning (and the same right
answer); prompt augmentation (`data.augment.paraphrase`) picks among prompt + paraphrases.

Decoded sample (what readers yield, a plain dict)::

    {"key": str, "shard": str, "kind": str, "images": list[PIL.Image.Image RGB], "prompt": str,
     "meta": dict, "paraphrases": list[str] (training kinds; [] when absent),
     + "response" [+ "messages"] | "chosen", "rejected" |
     "label", "category", "reference", "chosen", "rejected" (None when absent)}
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlalign.errors import DataError

SCHEMA_VERSION = 1
KINDS = ("sft", "preference", "eval")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
IMAGE_NAME = re.compile(r"^img(\d+)\.([a-z0-9]+)$")


class Meta(BaseModel):
    """Provenance and safety labels of a sample. Extra keys (ids, subcategories) are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    category: str = Field("unknown", description="Harm or content category.")
    source: str = Field(..., description="Data set the sample came from (synth, vlguard, ...).")
    harmful: bool | None = Field(None, description="Is the request harmful (None: unknown).")


class Message(BaseModel):
    """One chat turn of an SFT conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "assistant"]
    content: str


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: ClassVar[str]

    images: list[str] = Field(default_factory=list, description="Image member names, in order.")
    meta: Meta

    @model_validator(mode="after")
    def _image_names(self) -> _Record:
        for i, name in enumerate(self.images):
            m = IMAGE_NAME.match(name)
            if not m or int(m.group(1)) != i:
                raise ValueError(f"images[{i}] = {name!r}: expected 'img{i}.<ext>'")
        return self


_PARAPHRASES = Field(
    None, description="Other wordings of the prompt, same meaning (prompt augmentation)."
)


class SFTRecord(_Record):
    """Supervised sample: the prompt (or a conversation ending with a user turn) and a response."""

    kind: ClassVar[str] = "sft"
    prompt: str | None = None
    messages: list[Message] | None = None
    response: str
    paraphrases: list[str] | None = _PARAPHRASES

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> SFTRecord:
        if self.messages is None and self.prompt is None:
            raise ValueError("one of prompt or messages is required")
        if self.messages is not None:
            if not self.messages or self.messages[-1].role != "user":
                raise ValueError("messages must end with a user turn")
            if self.prompt is not None and self.prompt != self.messages[-1].content:
                raise ValueError("prompt differs from the last user message")
        _require_text(prompt=self.prompt_text, response=self.response)
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if self.prompt is not None else self.messages[-1].content  # type: ignore[index]


def _require_text(**fields: str | None) -> None:
    """Each named field, when given, must hold more than whitespace."""
    for name, value in fields.items():
        if value is not None and not value.strip():
            raise ValueError(f"{name} is empty")


def _require_distinct(chosen: str | None, rejected: str | None) -> None:
    """A preference pair must prefer something: chosen and rejected may not be the same text."""
    if chosen is not None and rejected is not None and chosen.strip() == rejected.strip():
        raise ValueError("chosen equals rejected (a pair that prefers nothing)")


class PreferenceRecord(_Record):
    """A preference pair tied to one set of images."""

    kind: ClassVar[str] = "preference"
    prompt: str
    chosen: str
    rejected: str
    paraphrases: list[str] | None = _PARAPHRASES

    @model_validator(mode="after")
    def _pair_texts(self) -> PreferenceRecord:
        _require_text(prompt=self.prompt, chosen=self.chosen, rejected=self.rejected)
        _require_distinct(self.chosen, self.rejected)
        return self


class EvalRecord(_Record):
    """A safety eval prompt with its label; chosen/rejected allow implicit-reward accuracy."""

    kind: ClassVar[str] = "eval"
    prompt: str
    label: Literal["harmful", "benign"]
    category: str
    reference: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    @model_validator(mode="after")
    def _pair_complete(self) -> EvalRecord:
        if (self.chosen is None) != (self.rejected is None):
            raise ValueError("chosen and rejected come together")
        _require_text(prompt=self.prompt, chosen=self.chosen, rejected=self.rejected)
        _require_distinct(self.chosen, self.rejected)
        return self


Record = SFTRecord | PreferenceRecord | EvalRecord
RECORD_TYPES: dict[str, type[_Record]] = {
    "sft": SFTRecord,
    "preference": PreferenceRecord,
    "eval": EvalRecord,
}


def record_type(kind: str) -> type[_Record]:
    """The record model of a kind (DataError for an unknown kind)."""
    try:
        return RECORD_TYPES[kind]
    except KeyError:
        raise DataError(f"unknown sample kind {kind!r} (known: {', '.join(KINDS)})") from None


def _format_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(record)"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_record(kind: str, data: Any, where: str) -> _Record:
    """Validate a decoded JSON object against the kind's schema; DataError names `where`."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: record must be a JSON object, got {type(data).__name__}")
    try:
        return record_type(kind).model_validate(data)
    except ValidationError as e:
        raise DataError(f"{where}: invalid {kind} record: {_format_validation(e)}") from None


def record_fields(record: _Record) -> dict[str, Any]:
    """The decoded-sample fields of a record (without key, shard and images)."""
    out: dict[str, Any] = {"kind": record.kind, "meta": record.meta.model_dump()}
    if isinstance(record, SFTRecord):
        out["prompt"] = record.prompt_text
        out["response"] = record.response
        out["paraphrases"] = list(record.paraphrases or [])
        if record.messages is not None:
            out["messages"] = [m.model_dump() for m in record.messages]
    elif isinstance(record, PreferenceRecord):
        out.update(prompt=record.prompt, chosen=record.chosen, rejected=record.rejected)
        out["paraphrases"] = list(record.paraphrases or [])
    else:
        assert isinstance(record, EvalRecord)
        out.update(
            prompt=record.prompt,
            label=record.label,
            category=record.category,
            reference=record.reference,
            chosen=record.chosen,
            rejected=record.rejected,
        )
    return out


def check_key(key: str) -> str:
    """A sample key must be non-empty [A-Za-z0-9_-] (webdataset splits member names at dots)."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise DataError(f"sample key {key!r}: use letters, digits, '_' or '-' only")
    return key


def sanitize_key(raw: Any, seen: set[str] | None = None) -> str:
    """A valid, unique key from a source id (dots and slashes become '_'; duplicates get -N)."""
    key = re.sub(r"[^A-Za-z0-9_\-]", "_", str(raw)) or "sample"
    if seen is not None:
        base, n = key, 1
        while key in seen:
            key = f"{base}-{n}"
            n += 1
        seen.add(key)
    return key
