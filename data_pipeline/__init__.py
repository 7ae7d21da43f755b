"""vlalign's data pipeline: webdataset shards with manifests, converters, synthetic safety data,
streaming readers, transforms and collation.

Layout of a shard set (a directory or URL prefix)::

    manifest.json            splits -> kind, schema version, shards (samples, bytes, sha256), digest
    train-000000.tar         webdataset shards: <key>.json (the record) + <key>.img0.png ...
    eval-000000.tar

Entry points: `synth.synthesize`, `converters.convert`, `writer.ShardSetWriter`,
`reader.iter_samples` (one process), `reader.TrainLoader` (training: ranks x workers, seeded
shuffling, resume from `position`, skip counts, `augment.augment_sample` per sample), `ray_data.read_ray_dataset` +
`ray_data.iter_ray_batches` (Ray Data), `transforms.make_transform` / `make_batch_transform`,
`collate.collate_sft` / `collate_pairs`, `skips.SkipCounter`, `validate.validate`,
`stats.compute_stats`; the `vlalign data` commands live in `commands`.
"""

from data_pipeline.schemas import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION"]
