"""Chat conversations as every stage reads them: a list of {"role", "content"} messages.

    evol generate --model smollm2-135m --in prompts.jsonl --out answers.jsonl   # checks each "messages"

    from pipeline.core.chat import messages_problem
    problem = messages_problem(record.get("messages"))     # None, or why it is not a conversation

The one check behind `evol generate`'s prompts, `evol train`'s data and the chat / ShareGPT seed
formats; each caller decides whether a problem stops the run or counts as a bad row.
"""

from __future__ import annotations

ROLES = ("system", "user", "assistant")


def messages_problem(
    messages,
    field: str = "messages",
    role_key: str = "role",
    text_key: str = "content",
    roles: tuple[str, ...] | None = ROLES,
) -> str | None:
    """Why `messages` is not a non-empty list of turns, each with a role (one of `roles`; any when
    None) under `role_key` and a string under `text_key`; None when it is one."""
    if not isinstance(messages, list) or not messages:
        return f'"{field}" must be a non-empty list of turns'
    allowed = f": {', '.join(roles[:-1])} or {roles[-1]}" if roles else ""
    for position, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or role_key not in message
            or (roles is not None and message[role_key] not in roles)
            or not isinstance(message.get(text_key), str)
        ):
            return (
                f'each message needs a role ("{role_key}"{allowed}) and a string content ("{text_key}"); '
                f'message {position} of "{field}" does not'
            )
    return None
