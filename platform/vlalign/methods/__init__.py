"""Training methods, one module each (the catalog names it), each a class implementing
`vlalign.methods.base.Method`: prepare, setup, units, tokens, step, metrics."""

from vlalign.methods.base import Method, Run, StepOutput, load_method

__all__ = ["Method", "Run", "StepOutput", "load_method"]
