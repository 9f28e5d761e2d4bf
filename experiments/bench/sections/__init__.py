"""One module per benchmark section; each exports ``SECTION`` (see :mod:`experiments.bench.registry`)."""
