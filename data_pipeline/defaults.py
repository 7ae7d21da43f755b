"""Shard-size defaults (a module without heavy imports, so the CLI starts fast)."""

DEFAULT_MAX_SAMPLES = 1000  # samples per shard
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # bytes per shard

# Names `vlalign data convert --format` accepts (data_pipeline.converters.FORMATS has the code;
# a test keeps the two equal).
CONVERTER_FORMATS = ("beavertails-v", "jsonl", "rlaif-v", "spa-vl", "vlguard")
