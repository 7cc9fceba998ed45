"""Plot scripts (one per figure kind); each is runnable as ``python plots/NAME.py RESULTS_DIR -o FILE.png``
and importable as ``plots.NAME`` (``main(argv)``). They read only the results CSVs."""
