"""The documents of an optimization: the string DSPy carries per example, mapped back to the real content."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._example import Example
from .._inputs import InputDoc

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["DocEntry", "DocRegistry", "normalized_output"]


@dataclass(frozen=True)
class DocEntry:
    content: str | list[dict[str, Any]]
    variables: Mapping[str, Any] | None
    text: str
    doc: InputDoc | None = None

    def input_doc(self) -> InputDoc:
        """The document the extraction plan runs on."""
        if self.doc is not None:
            return self.doc
        if isinstance(self.content, str):
            return InputDoc(parts=({"type": "text", "text": self.content},), text=self.content, kind="text",
                            variables=self.variables)
        return InputDoc(parts=tuple(self.content), text=self.text, kind="mixed", variables=self.variables)


class DocRegistry:
    """Maps the string DSPy carries as the ``document`` input back to the document (content, variables)."""

    def __init__(self, prompter: Prompter) -> None:
        self._prompter = prompter
        self._docs: dict[str, DocEntry] = {}

    def add(self, example: Example) -> str:
        doc = self._prompter._input(example)
        content = doc.as_content()
        variables = doc.variables
        if isinstance(content, str):
            key = content
        else:
            n = sum(1 for p in content if p.get("type") != "text")
            key = f"{doc.text}\n[{n} image(s); document {doc.fingerprint[:12]}]"
        self._docs[key] = DocEntry(content=content, variables=variables, text=doc.text, doc=doc)
        return key

    def get(self, key: str) -> DocEntry:
        entry = self._docs.get(key)
        return entry if entry is not None else DocEntry(content=key, variables=None, text=key)

    def __deepcopy__(self, memo: dict[int, Any]) -> DocRegistry:
        return self


def normalized_output(prompter: Prompter, expected: Mapping[str, Any]) -> dict[str, Any]:
    """A label as the model would answer it (validated and dumped), or as given if it does not validate."""
    try:
        return dict(prompter.model.model_validate(dict(expected)).model_dump(mode="json"))
    except Exception:  # a partial label is still a usable demo
        return dict(expected)
