"""Autotune config helpers shared by the kernels."""
import os


def interpreter_configs(configs, interpreter_config):
    """triton.autotune with 2+ configs fails under TRITON_INTERPRET=1 (it tries to benchmark):
    give the interpreter one config, the GPU the whole list."""
    return [interpreter_config] if os.environ.get("TRITON_INTERPRET") == "1" else list(configs)
