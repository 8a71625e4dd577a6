"""The Examples sections of the public functions run as written (on the random tiny model)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "maskdiffusion.engine",
    "maskdiffusion.model.loading",
    "maskdiffusion.session",
    "maskdiffusion.core.params",
    "maskdiffusion.core.refine",
    "maskdiffusion.core.prototypes",
    "maskdiffusion.core.classes",
    "maskdiffusion.core.labels",
    "maskdiffusion.core.marks",
    "maskdiffusion.napari.turns",
    "maskdiffusion.core.memory",
    "maskdiffusion.dataset.project",
    "maskdiffusion.dataset.lock",
    "maskdiffusion.geo.label_files",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run_as_written(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name} has no Examples that run"
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples in {name} failed"
