"""One module per op: the backends it registers with sslfast.dispatch and the entry point
that dispatches. Modules here import Triton and the compiled extension lazily."""
