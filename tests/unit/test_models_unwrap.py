"""`vlalign.models.unwrap`: the one way to reach the model under DeepSpeed/DDP and PEFT."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

from vlalign.models.unwrap import unwrap


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x)


class Engine(nn.Module):
    """Holds the model as `.module`, as a DeepSpeed engine and DDP do."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class Head(nn.Module):
    """A model that wraps a policy without `.module` (as RewardModel does): never unwrapped."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy


def test_unwrap_strips_engine_and_peft_wrappers():
    base = Tiny()
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["proj"]))
    engine = Engine(peft_model)
    assert unwrap(engine) is base
    assert unwrap(peft_model) is base
    assert unwrap(base) is base
    assert unwrap(Engine(Engine(base))) is base


def test_unwrap_without_peft_keeps_the_peft_model_and_reward_heads():
    base = Tiny()
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["proj"]))
    assert unwrap(Engine(peft_model), peft=False) is peft_model  # disable_adapter() lives here
    assert unwrap(peft_model, peft=False) is peft_model
    head = Head(peft_model)
    assert unwrap(Engine(head), peft=False) is head
    assert unwrap(head) is head  # no wrapper protocol: returned as is
