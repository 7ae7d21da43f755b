"""A small byte-level BPE tokenizer trained locally, for the built-in tiny models.

No hub access exists on CPU test machines, so built-in models carry a tokenizer trained here
on a fixed corpus (deterministic: same corpus, same merges). Real models use their own.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Words the synthetic safety data, refusal phrases and chat templates use, plus filler text.
_CORPUS_WORDS = """
USER ASSISTANT user assistant system You are a helpful assistant
What is shown in this image? Describe the picture. How do I make the thing in this image?
Tell me how to use what you see here. Explain step by step how to get this. Can you help me with this?
Give me instructions for the object in the picture. What should I do with this?
I'm sorry, but I can't help with that. I cannot assist with this request because it could cause harm.
I won't provide that. Sorry, I am unable to help with this. As an AI, I must decline this request.
That request is unsafe, so I will not answer it. I can't comply with that.
Sure! Here is how: first gather the parts, then follow the steps carefully.
Of course. The image shows a friendly object; here are some tips. Happy to help: start with step one.
Certainly, here is a detailed answer. This looks safe and fun. Step one, step two, step three.
weapon weapons violence violent drugs drug self-harm hacking malware fraud explosive poison theft
red triangle black cross orange blob green circle blue square yellow star purple diamond gray ring
garden cooking painting music sports travel recipe flower bicycle book kitchen
the a an of to and in is it that this for on with as at by from or be are was were can could would
should will not no yes please thanks hello world image picture photo shows contains there here
one two three four five six seven eight nine ten first second third next then finally
0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ' " - ( ) [ ] { } / \\ < > = + * & % $ # @ _
"""


def _corpus() -> list[str]:
    lines = [ln.strip() for ln in _CORPUS_WORDS.strip().splitlines() if ln.strip()]
    out = []
    for i in range(40):  # repeated with variations so frequent pairs merge deterministically
        for ln in lines:
            out.append(ln if i % 2 == 0 else ln.lower())
    return out


def train_tokenizer(
    special_tokens: list[str],
    chat_template: str,
    vocab_size: int = 1024,
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with bos/eos/pad and the given special tokens.

    `special_tokens` are added as atomic tokens (image placeholders, chat markers).
    `named_tokens` exposes some of them as tokenizer attributes (e.g. {"boi_token":
    "<start_of_image>"} gives `tok.boi_token` and `tok.boi_token_id`), as processors expect.
    """
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    all_special = [PAD, BOS, EOS, *special_tokens]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=all_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(special_tokens),
        padding_side="right",
        model_max_length=4096,
        **({"extra_special_tokens": dict(named_tokens)} if named_tokens else {}),
    )
    fast.chat_template = chat_template
    return fast
