"""dreamlab as an lm-eval model (`python -m dreamlab.evals.lm_eval --model dreamlab ...`; extra `dreamlab[lm-eval]`).

`args` parses `--model_args` (no lm-eval or torch needed), `model` is the registered LM whose
`generate_until` runs dreamlab's sampler, `record` writes lm-eval's results into the run store, and
`__main__` is the entry: it registers the model, runs lm-eval's own CLI and records what it wrote.
"""
