"""A scripted generation backend and a character tokenizer, for testing the flow and pair-mining logic
without a model (the integration tests use the real SmolLM2)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import ClassVar

SPECIAL = {"<pad>": 0, "<s>": 1, "<eos>": 2, "yes": 3, "no": 4, "Yes": 5, "No": 6}
OFFSET = 10


class CharTokenizer:
    """One token per character; a few whole-word tokens so that yes/no are single tokens."""

    eos_token_id = 2
    pad_token_id = 0
    eos_token = "<eos>"
    added_tokens_encoder: ClassVar[dict] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if text in SPECIAL:
            return [SPECIAL[text]]
        return [ord(c) + OFFSET for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        inv = {v: k for k, v in SPECIAL.items()}
        out = []
        for i in ids:
            if i >= OFFSET:
                out.append(chr(i - OFFSET))
            elif not skip_special_tokens or inv.get(i) in ("yes", "no", "Yes", "No"):
                out.append(inv.get(i, ""))
        return "".join(out)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        text = "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"
        return [SPECIAL["<s>"]] + self.encode(text)


class ScriptedBackend:
    """Answer chunks come from `script[partial_text]`, a list consumed in order (the n-th request for the
    same partial answer gets the n-th entry, the last entry repeats). The Stop LLM says yes with
    probability `stop_rule(partial_text)`."""

    def __init__(self, tokenizer: CharTokenizer, script: dict[str, list[str]], stop_rule, prompt_len_of):
        self.tok = tokenizer
        self.script = script
        self.stop_rule = stop_rule
        self.prompt_len_of = prompt_len_of  # context -> length of the chat prompt part
        self.calls: dict[str, int] = defaultdict(int)
        self.generate_calls: list[int] = []  # batch size of each generate call
        self.adapters_seen: list = []
        self.stop_calls: list[int] = []  # batch size of each Stop call
        self.tokens_generated = 0

    def reset(self):
        pass

    def versions(self):
        return {"answer": 7, "stop": 3}

    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        self.generate_calls.append(len(contexts))
        self.adapters_seen.extend(adapter if isinstance(adapter, list) else [adapter])
        out = []
        for ctx in contexts:
            partial = self.tok.decode(ctx[self.prompt_len_of(ctx) :])
            options = self.script.get(partial, ["<eos>"])
            n = self.calls[partial]
            self.calls[partial] += 1
            text = options[min(n, len(options) - 1)]
            # "<eos>" alone is an end-of-sequence chunk; "text<eos>" is text the Answer LLM ended itself.
            if text.endswith("<eos>"):
                ids = self.tok.encode(text[: -len("<eos>")])[: max_new_tokens - 1] + [SPECIAL["<eos>"]]
            else:
                ids = self.tok.encode(text)[:max_new_tokens]
            out.append(ids)
        self.tokens_generated += sum(len(o) for o in out)
        return out

    def next_token_logprobs(self, contexts, adapter, token_ids):
        self.stop_calls.append(len(contexts))
        out = []
        for ctx in contexts:
            text = self.tok.decode(ctx)
            partial = text.split("Candidate solution: ", 1)[1].split("\nIs the candidate", 1)[0]
            p = min(max(self.stop_rule(partial), 1e-9), 1 - 1e-9)
            # token_ids = yes_ids + no_ids (two each): split the mass evenly inside each side.
            out.append([math.log(p / 2)] * 2 + [math.log((1 - p) / 2)] * 2)
        return out
