"""``kernels``: run a test once with the compiled CPU kernels (dist_hyena/nn/native.cpp) and once with the eager
passes they replace, so both stay tested on a machine that has a compiler."""

import pytest

from dist_hyena.nn import native


@pytest.fixture(params=["native", "eager"])
def kernels(request, monkeypatch):
    monkeypatch.setenv(native.ENV, "1" if request.param == "native" else "0")
    native.library.cache_clear()
    yield request.param
    native.library.cache_clear()

