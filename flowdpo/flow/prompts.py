"""Chat prompts of the two LLMs of the flow (the paper's prompts), as token ids.

The Answer LLM continues *its own* partial answer: its context is the chat prompt (system + question +
assistant header) followed by the partial answer's token ids, so chunks concatenate token-exactly.
The Stop LLM reads the partial answer as text inside its user message and answers yes/no.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowdpo.spec import FlowSpec


@dataclass
class PromptBuilder:
    tokenizer: object
    flow: FlowSpec

    def __post_init__(self):
        tok = self.tokenizer
        self.yes_id, self.no_id = _single_token(tok, "yes"), _single_token(tok, "no")
        # Capitalised variants count towards the same decision: P(yes) sums both casings (the untrained
        # model puts most of its mass on "Yes"/"No"), and Stop pairs train the same sums.
        self.yes_ids = sorted({self.yes_id, _single_token(tok, "Yes")})
        self.no_ids = sorted({self.no_id, _single_token(tok, "No")})
        self.eos_ids = _eos_ids(tok)

    def decision_ids(self, stop: bool) -> list[int]:
        """The next-token set of one Stop decision: the yes-tokens (stop) or the no-tokens (continue)."""
        return list(self.yes_ids if stop else self.no_ids)

    def _chat(self, system: str, user: str) -> list[int]:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def answer_prompt(self, question: str) -> list[int]:
        return self._chat(self.flow.answer_system_prompt, question)

    def stop_prompt(self, question: str, partial_text: str) -> list[int]:
        user = self.flow.stop_user_template.format(problem=question, solution=partial_text)
        return self._chat(self.flow.stop_system_prompt, user)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _single_token(tok, word: str) -> int:
    ids = tok.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {word!r} into {len(ids)} tokens; the Stop LLM needs one")
    return ids[0]


def _eos_ids(tok) -> frozenset[int]:
    ids = {tok.eos_token_id}
    gen = getattr(tok, "added_tokens_encoder", {}) or {}
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"):
        if name in gen:
            ids.add(gen[name])
    return frozenset(i for i in ids if i is not None)
