"""The prompt of an implicit-prompt preference record: ``chosen`` and ``rejected`` that begin with it.

TRL 1.16's ``extract_prompt`` takes the longest shared beginning as the prompt: for conversations the leading
messages both sides share, for text the longest common prefix of characters (moving a space just before the
difference to the completions). The prompt here is that shared beginning **cut at a turn boundary**:

* conversations: the shared leading messages (same role and content), at most all but the last message of each
  side, so that both completions keep at least one message — TRL's result wherever both keep one;
* text with the ``"\\n\\nHuman: … \\n\\nAssistant:"`` turns of public preference sets (Anthropic HH): everything
  through the last ``"\\n\\nAssistant:"`` both sides share; the completions are the rest (``" It is …"``);
* other text: everything before the last whitespace of the shared prefix, so a word is never split and the
  completions begin with that whitespace. Where the texts differ right after a space this is TRL's cut.

A record whose shared beginning has no such boundary (no shared message, or shared text with no whitespace
and no marker) has no prompt; the callers raise a :class:`~posttrain.errors.DataError` for it.
"""

from __future__ import annotations

ASSISTANT_MARKER = "\n\nAssistant:"


def shared_messages(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading messages form the prompt of two conversations (0: none)."""
    shared = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a["role"] != b["role"] or a["content"] != b["content"]:
            break
        shared += 1
    return min(shared, len(chosen) - 1, len(rejected) - 1)


def shared_text(chosen: str, rejected: str) -> int:
    """The length of the prompt two texts begin with (0: none), cut as the module docstring says."""
    common = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        common += 1
    prefix = chosen[:common]
    marker = prefix.rfind(ASSISTANT_MARKER)
    if marker >= 0:
        return marker + len(ASSISTANT_MARKER)
    space = max((i for i, character in enumerate(prefix) if character.isspace()), default=0)
    return space if prefix[:space].strip() else 0
