"""The CPU demo and its scaffolding: everything here exists so `phi3v-ray demo` runs offline in minutes.

- run.py: the one-command demo (sample catalog → warm start → prepare → sweep → leaderboard).
- terminal.py: one line per stage on the terminal; Ray's, Tune's and the libraries' own output to a log file.
- warmstart.py: a short pretraining of the tiny base that stands in for a real pretrained checkpoint.
- tiny_tokenizer.py: the builder of the tiny tokenizer file that `phi3v_ray.model.tokenizer` ships and loads.

Nothing in the core (model, data, train, tune, evaluation) imports this package; it imports them.
"""
