"""Pretraining loop, models, optimisers and schedules behind `sslfast pretrain`."""
