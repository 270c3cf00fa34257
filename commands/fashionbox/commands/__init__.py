"""The ``fashionbox`` command and what only the commands use: ``cli`` (train, convert, serve,
detect, eval, synth, demo, loadtest, tune), ``demo``, ``detect``, ``evaluation`` and ``errors``
(which exceptions a user sees as one line). The top floor: it may import every other part.
"""
