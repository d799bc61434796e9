"""Every docstring Example in the public package runs (CONVENTIONS.md: doctested examples)."""
import doctest
import importlib
import pkgutil

import pytest

import sslfast

# Triton kernels are not public API and import triton at module level.
SKIP_PREFIXES = ("sslfast.kernels", "sslfast._C")


def _doctests(module_name):
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.examples]


def _modules_with_examples():
    names = ["sslfast"] + [
        info.name for info in pkgutil.walk_packages(sslfast.__path__, prefix="sslfast.")
        if not info.name.startswith(SKIP_PREFIXES)
    ]
    return sorted(name for name in names if _doctests(name))


@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_docstring_examples(module_name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in _doctests(module_name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {module_name}:\n" + "".join(report)
