"""The ``fashionbox`` command and what only the commands use: ``cli`` (train, convert, serve,
detect, eval, calibrate, synth, demo, loadtest, tune, catalog, model-analyzer-config), ``demo``, ``detect``,
``calibration``, ``evaluation`` and ``errors``
(which exceptions a user sees as one line). The top floor: it may import every other part.
"""
