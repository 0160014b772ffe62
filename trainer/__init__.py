"""serwild.trainer: torchrun DDP fine-tuning of AlexNet from the WebDataset shards.

    serwild train --config configs/demo.yaml [--nproc N] [--cv] [--resume] [k=v …]   (launch.py)
    torchrun --nproc_per_node=N -m serwild.trainer --config … [--resume] [k=v …]       (__main__.py)

Modules, in the order a run uses them: ``launch`` (``serwild train``: resolve, check, write
the run spec, start torchrun), ``__main__`` (the rank's entry point), ``preflight`` (the run
spec and run folder, shard selection and checks), ``distributed`` (the process group from
torchrun's environment), ``model`` (AlexNet and its small twin, weights), ``recipe`` (frozen
layers, optimiser, schedule), ``features`` (the frozen-feature cache), ``outputs`` (the one
evaluation loop), ``train`` (prepare → fit), ``history`` (metrics.jsonl, curves), ``cv``
(mean ± std over folds).
"""
