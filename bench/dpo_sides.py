"""The two implementations `bench/dpo_step.py` times: vlalign's DPO step and TRL's DPOTrainer.

Both train LoRA adapters on the same base weights (separate copies), the same exact target
modules (`vlalign.models.lora.lora_targets`: the LM's projections), rank, alpha and learning rate,
on the same preference pairs, with the same optimizer: a plain `torch.optim.AdamW` over the
trainable parameters (no DeepSpeed, no gradient clipping, no LR schedule) on both sides.

- vlalign: `vlalign.methods.dpo.Dpo.step` (the method step the training loop runs) under the
  variant's `PairOptions` and reference kind, then backward of the pair-mean loss and
  `optimizer.step()`. On CUDA the step runs under bf16 autocast, like TRL under Accelerate.
- TRL: `trl.DPOTrainer(model, args=DPOConfig(...), processing_class=processor,
  peft_config=LoraConfig(...))`; one step is `trainer.training_step(model, batch)` (TRL's
  `compute_loss` + `accelerator.backward`) and `optimizer.step()`, with the model and optimizer
  prepared by the trainer's Accelerator (bf16 autocast on CUDA). TRL cannot precompute reference
  log-probs for vision datasets (its `precompute_ref_log_probs` raises), so its reference is the
  base model with the adapter disabled. Batches are built once by TRL's own collator
  (`DataCollatorForVisionPreference`) and reused, as vlalign's are by `collate_pairs`: data
  preparation is not timed on either side.

TRL is a bench-only dependency (`pip install -e .[bench]`); it is imported only here.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import dataclass

import torch

ONE_CHUNK = 1 << 30  # a log-prob "chunk" larger than any batch: chunking off


@dataclass(frozen=True)
class Variant:
    """One vlalign configuration of the ablation table."""

    name: str
    label: str
    concatenate: bool = True
    share_vision: bool = True
    keep_only_response: bool = True
    chunked: bool = True
    reference: str = "precomputed"
    packed: bool = False


VARIANTS = (
    Variant("vlalign", "vlalign dpo.step, all on (precomputed ref)"),
    Variant("no_concatenate", "  - one forward for chosen+rejected", concatenate=False),
    Variant("no_share_vision", "  - vision tower once per pair", share_vision=False),
    Variant("no_response_only", "  - response-only logits", keep_only_response=False),
    Variant("no_chunking", "  - chunked log-probs (one chunk)", chunked=False),
    Variant("ref_forward", "  - precomputed ref (adapter-off fwd)", reference="adapter_disabled"),
    Variant("packed", "  + packed shared prefix", packed=True),
    Variant(
        "packed_ref_forward", "  + packed prefix, adapter-off ref fwd", packed=True,
        reference="adapter_disabled",
    ),
    Variant(
        "naive", "  all off", concatenate=False, share_vision=False, keep_only_response=False,
        chunked=False, reference="adapter_disabled",
    ),
)  # fmt: skip
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast on CUDA for bf16 runs (what Accelerate does for TRL); nothing otherwise."""
    if device == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def vlalign_batch(setup, max_length: int = 8192) -> dict:
    """The pair batch as vlalign's data path builds it (ChatEncoder -> encode_one -> collate)."""
    from data_pipeline.collate import collate_pairs
    from data_pipeline.transforms import encode_one
    from vlalign.models.inputs import ChatEncoder

    enc = ChatEncoder(setup.processor, setup.family, max_length=max_length)
    examples = [encode_one(enc, ex, "preference") for ex in setup.examples]
    return collate_pairs(examples, setup.processor.tokenizer.pad_token_id)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters and buffers plus the optimizer's state tensors."""
    n = sum(t.numel() * t.element_size() for t in model.parameters())
    n += sum(t.numel() * t.element_size() for t in model.buffers())
    for st in optimizer.state.values():
        n += sum(v.numel() * v.element_size() for v in st.values() if isinstance(v, torch.Tensor))
    return n


class VlalignSide:
    """vlalign's DPO step on a PEFT model; every variant shares the model and the optimizer."""

    def __init__(self, setup, batch: dict, lora_r: int, lora_alpha: float, lr: float, chunk: int):
        from vlalign.config.schema import DpoMethod, PeftConfig
        from vlalign.models import apply_peft

        self.setup, self.device, self.dtype = setup, setup.device, setup.dtype
        self.chunk = chunk
        self.pad_id = setup.processor.tokenizer.pad_token_id
        self.peft = PeftConfig(r=lora_r, alpha=lora_alpha, dropout=0.0)
        self.model = apply_peft(setup.model, self.peft)
        self.batch = batch
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr)
        self.trainable = sum(p.numel() for p in params)
        self.methods = {}
        # Precomputed reference: the adapter-disabled policy's log-probs, once (timed apart)
        scorer = self._method(DpoMethod(reference="adapter_disabled"))
        sync(self.device)
        t0 = time.perf_counter()
        with autocast(self.device, self.dtype):
            c, r = scorer.reference_logps(batch, None)
        sync(self.device)
        self.precompute_s = time.perf_counter() - t0
        self.ref_cache = {k: (float(c[i]), float(r[i])) for i, k in enumerate(batch["keys"])}
        for ref in ("precomputed", "adapter_disabled"):
            m = self._method(DpoMethod(reference=ref, logprob_chunk=chunk))
            m.ref_cache = self.ref_cache
            self.methods[ref] = m
        self.init_logps = (float(c.mean()), float(r.mean()))  # LoRA B = 0: policy = reference
        self.notes = []

    def _method(self, cfg):
        """The Dpo method bound to this side's model, as the loop binds it (no engine here)."""
        from vlalign.methods.dpo import Dpo

        m = Dpo(cfg)
        m.pad_id = self.pad_id
        m.setup(self.model)
        return m

    def _options(self, v: Variant):
        from vlalign.methods.forward import PairOptions

        return PairOptions(
            concatenate=v.concatenate,
            share_vision=v.share_vision,
            chunk_size=self.chunk if v.chunked else ONE_CHUNK,
            keep_only_response=v.keep_only_response,
            pack_prefix=v.packed,
        )

    def step(self, v: Variant) -> dict:
        method = self.methods[v.reference]
        method.opts = self._options(v)
        with autocast(self.device, self.dtype):
            out = method.step(self.batch)
        (out.loss_sum / out.count).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(out.loss_sum.detach()) / out.count}

    def static_bytes(self) -> int:
        return state_bytes(self.model, self.optimizer)


class TrlSide:
    """TRL's DPOTrainer on its own copy of the base model, stepped by hand (see module doc)."""

    def __init__(
        self,
        setup,
        base_model: torch.nn.Module,
        targets: list[str],
        lora_r: int,
        lora_alpha: float,
        lr: float,
        gradient_checkpointing: bool,
    ):
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from trl import DPOConfig, DPOTrainer

        self.version = trl.__version__
        self.device, self.dtype = setup.device, setup.dtype
        rows = [
            {
                "images": ex["images"],
                "prompt": [{"role": "user", "content": ex["prompt"]}],
                "chosen": [{"role": "assistant", "content": ex["chosen"]}],
                "rejected": [{"role": "assistant", "content": ex["rejected"]}],
            }
            for ex in setup.examples
        ]
        self._tmp = tempfile.TemporaryDirectory(prefix="vlalign-bench-trl-")
        args = DPOConfig(
            output_dir=self._tmp.name,
            per_device_train_batch_size=len(rows),
            gradient_accumulation_steps=1,
            max_length=None,  # no truncation: both sides see the full sequences
            learning_rate=lr,
            beta=0.1,
            loss_type=["sigmoid"],
            bf16=self.device == "cuda" and self.dtype == torch.bfloat16,
            use_cpu=self.device == "cpu",
            gradient_checkpointing=gradient_checkpointing,
            report_to="none",
            logging_steps=10**9,
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=0,
            seed=0,
        )
        lora = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=targets, bias="none"
        )
        self.trainer = DPOTrainer(
            model=base_model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=setup.processor,
            peft_config=lora,
        )
        examples = [copy.copy(r) for r in self.trainer.train_dataset]  # decoded like train() does
        batch = self.trainer.data_collator(examples)
        self.batch = to_device(dict(batch), self.device)
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=lr)
        self.model, self.optimizer = self.trainer.accelerator.prepare(self.trainer.model, optimizer)
        self.trainer.current_gradient_accumulation_steps = 1
        self.tokens = int(self.batch["attention_mask"].sum())

    def step(self) -> dict:
        loss = self.trainer.training_step(self.model, self.batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss)}

    def first_logps(self) -> tuple[float, float] | None:
        m = self.trainer._metrics["train"]
        if m.get("logps/chosen"):
            return m["logps/chosen"][0], m["logps/rejected"][0]
        return None

    def static_bytes(self) -> int:
        return state_bytes(self.trainer.model, self.optimizer)
