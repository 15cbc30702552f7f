"""The prompt that asks the LM for a document's topic (the published defaults, byte for byte)."""

from __future__ import annotations

from dataclasses import dataclass

from st.errors import InputError

INSTRUCTION = "Generate a label that capture the overall theme of the document below."
TEMPLATE = "{instruction}\n\nDocument: {document}\n\nTopic:"


@dataclass(frozen=True)
class Prompt:
    template: str = TEMPLATE
    instruction: str = INSTRUCTION

    def __post_init__(self) -> None:
        if "{document}" not in self.template:
            raise InputError("the prompt template must contain {document}")
        try:
            self.template.format(instruction="", document="")
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(
                f"the prompt template may only use {{instruction}} and {{document}} (found {e}); "
                "write literal braces as {{ and }}"
            ) from None

    def render(self, document: str) -> str:
        return self.template.format(instruction=self.instruction, document=document)
