"""vlalign: safety alignment of vision-language models.

One recipe YAML drives data ingestion, DeepSpeed + LoRA fine-tuning (SFT, reward models,
DPO family), safety evaluation and MLflow registry promotion, on a CPU or a GPU cluster.
"""

__version__ = "0.1.0"
