"""(image, prompt, response) -> model inputs with the family's chat template.

The prompt (chat template + generation prompt, image placeholders expanded by the processor)
and the response (+ the template's end-of-turn text) are tokenized separately and concatenated,
so the prompt's tokens are an exact prefix of the full sequence by construction; a test checks
that this equals tokenizing the whole conversation at once for every family. Labels are -100 on
the prompt and on every image token. Truncation cuts the response tail, never image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from vlalign.errors import DataError
from vlalign.models.families import all_families
from vlalign.models.families import family as family_of_name

IGNORE_INDEX = -100
_SENTINEL = "VLALIGNSENTINEL"
# Per-token modality ids some LMs take ([T], 1 on image tokens), named per family.
TOKEN_TYPE_KEYS = tuple(dict.fromkeys(f.token_type_key for f in all_families() if f.token_type_key))
# Per-sample tensors the processor returns besides the image tensors.
TEXT_KEYS = ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS)


def _messages(prompt: str, n_images: int, response: str | None = None) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    msgs = [{"role": "user", "content": content}]
    if response is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
    return msgs


@dataclass
class EncodedPrompt:
    """A tokenized prompt with its images. input_ids: [P]; image tensors as the processor makes them."""

    input_ids: torch.Tensor
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


class ChatEncoder:
    """Encodes prompts and responses for one processor/family.

    `family` is the family's name; `model_family` its object (`vlalign.models.families`).
    `image_token_id` is the id of the image tokens the processor expands; labels never cover it.
    """

    def __init__(self, processor, family: str, max_length: int = 512) -> None:
        self.processor = processor
        self.family = family
        self.model_family = family_of_name(family)
        self.max_length = max_length
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.model_family.image_token_id(processor)
        self.response_prefix, self.end_of_turn = self._turn_affixes()

    def token_types(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """{the family's token type key: ids [..., T]} for input_ids [..., T]; {} when it has none."""
        key = self.model_family.token_type_key
        if key is None:
            return {}
        return {key: self.model_family.token_types(input_ids, self.image_token_id)}

    def _turn_affixes(self) -> tuple[str, str]:
        """Text the template puts between the generation prompt and the response, and after it."""
        gen = self.prompt_text("x", 1)
        full = self.processor.apply_chat_template(
            _messages("x", 1, _SENTINEL), add_generation_prompt=False, tokenize=False
        )
        before, _, after = full.partition(_SENTINEL)
        if not before.startswith(gen):
            raise DataError(
                f"chat template of family {self.family!r}: the generation prompt is not a prefix "
                "of the rendered conversation; cannot split prompt from response"
            )
        return before[len(gen) :], after

    def prompt_text(self, prompt: str, n_images: int = 1) -> str:
        """The chat-templated prompt with the generation prompt appended."""
        return self.processor.apply_chat_template(
            _messages(prompt, n_images), add_generation_prompt=True, tokenize=False
        )

    def encode_prompt(self, images: list[Image.Image], prompt: str) -> EncodedPrompt:
        """Prompt -> ids [P] (image placeholders expanded) and the image tensors for one sample."""
        text = self.prompt_text(prompt, len(images))
        kwargs = dict(self.model_family.prompt_kwargs)
        if images:
            kwargs["images"] = self.model_family.processor_images([images])
        enc = self.processor(text=[text], return_tensors="pt", **kwargs)
        ids = enc["input_ids"][0]
        image_inputs = {k: v for k, v in enc.items() if k not in TEXT_KEYS}
        if len(ids) > self.max_length:
            raise DataError(
                f"prompt is {len(ids)} tokens (with image tokens) > data.max_length {self.max_length}: "
                "raise max_length; image tokens are never truncated"
            )
        return EncodedPrompt(input_ids=ids, image_inputs=image_inputs)

    def encode_response(self, response: str) -> torch.Tensor:
        """Response text + end-of-turn -> ids [R]."""
        text = self.response_prefix + response + self.end_of_turn
        return torch.tensor(
            self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long
        )

    def join(
        self, prompt: EncodedPrompt, response_ids: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Concatenate prompt [P] and response [R] into input_ids/labels [T], cutting the response tail.

        Returns (tensors, tokens truncated).
        """
        room = self.max_length - len(prompt.input_ids)
        cut = max(0, len(response_ids) - room)
        resp = response_ids[: len(response_ids) - cut] if cut else response_ids
        ids = torch.cat([prompt.input_ids, resp])
        labels = torch.cat([torch.full_like(prompt.input_ids, IGNORE_INDEX), resp])
        labels[ids == self.image_token_id] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}, cut

    def sft_example(self, images: list[Image.Image], prompt: str, response: str) -> dict:
        """One SFT example: input_ids/labels [T], image tensors, and `truncated` (tokens cut)."""
        p = self.encode_prompt(images, prompt)
        seq, cut = self.join(p, self.encode_response(response))
        return {
            **seq,
            "image_inputs": p.image_inputs,
            "prompt_len": len(p.input_ids),
            "truncated": cut,
        }

    def pair_example(
        self, images: list[Image.Image], prompt: str, chosen: str, rejected: str
    ) -> dict:
        """One preference pair tied to one image: chosen_* and rejected_* [Tc]/[Tr], shared image tensors."""
        p = self.encode_prompt(images, prompt)
        c, cut_c = self.join(p, self.encode_response(chosen))
        r, cut_r = self.join(p, self.encode_response(rejected))
        return {
            "chosen_input_ids": c["input_ids"],
            "chosen_labels": c["labels"],
            "rejected_input_ids": r["input_ids"],
            "rejected_labels": r["labels"],
            "image_inputs": p.image_inputs,
            "prompt_len": len(p.input_ids),
            "truncated": cut_c + cut_r,
        }
