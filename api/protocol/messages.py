"""The messages of a chat request: a union by role, so the schema says what each role needs.

Content is a string or text parts, required except on an assistant message
(null there, as OpenAI allows, reads as empty). Messages are lenient about
extra fields: a conversation echoed back from a response carries `refusal`
or `annotations`, which are accepted and not used.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import BaseModel, Field

from api.protocol.common import LENIENT


class TextContentPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = LENIENT
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    # Lenient: a conversation echoed back from a response carries fields such as `refusal` or `annotations`.
    model_config = LENIENT
    name: str | None = None

    def text(self) -> str:
        content = getattr(self, "content", None)
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(part.text for part in content)


class SystemMessage(_Message):
    # "developer" is OpenAI's newer name for a system message; it is read as "system".
    role: Literal["system", "developer"]
    content: str | list[TextContentPart]


class UserMessage(_Message):
    role: Literal["user"]
    content: str | list[TextContentPart]


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: str | list[TextContentPart] | None = Field(
        None, description="May be null (or absent), as OpenAI allows; it reads as empty.")


# deviation: tool and function messages are not supported. The role picks the schema, so the OpenAPI page
# says what the server accepts: content is required except on an assistant message.
ChatMessage = Annotated[Union[SystemMessage, UserMessage, AssistantMessage], Field(discriminator="role")]
MESSAGE_ROLES: frozenset[str] = frozenset(r for m in (SystemMessage, UserMessage, AssistantMessage)
                                          for r in get_args(m.model_fields["role"].annotation))
