"""The training engine: the loop every method uses, evaluation, and the train/eval/predict/quickstart commands.

A method owns its training step (``methods/``); the loop (``trainer.py``) owns everything else. Modules:

    trainer.py     Trainer: build a run from a Config, train, evaluate, checkpoint, resume
    context.py     TrainContext: what a method gets (model, loss, autocast, backward, registration points)
    methods/       Method interface (base.py), supervised.py, advsemiseg.py, unimatch.py, teacher.py (what the
                   methods share); their registry of names is semiseg/method_names.py
    build.py       config -> datasets, split, model, optimizer, loss (the contracts of docs/internals.md)
    sampling.py    seeded, resumable training streams; evaluation shards
    evaluate.py    evaluate(): the one evaluation routine (training and `semiseg eval`)
    predict.py     loading a trained model, whole-image prediction, palette PNGs
    precision.py   fp32 / bf16 / fp16, channels_last, measured CPU defaults
    checkpoint.py  atomic saves, weights_only loading, RNG state
    schedule.py    poly learning rate with warmup
    distributed.py torchrun / DDP helpers
    run_dir.py     run-folder layout and the no-overwrite rule
    logger.py      metrics.jsonl and TensorBoard
    commands_*.py, quickstart.py   the CLI commands
"""
