"""serwild.trainer: torchrun DDP fine-tuning of AlexNet from the WebDataset shards.

    serwild train --config configs/demo.yaml [--nproc N] [--cv] [--resume] [k=v …]   (launch.py)
    torchrun --nproc_per_node=N -m serwild.trainer --config … [--resume] [k=v …]       (__main__.py)

Modules, in the order a run uses them: ``config`` (TrainConfig, CvConfig), ``setup`` (resolve
the config, select + verify shards, the run folder), ``distributed`` (process group from
torchrun's environment), ``data`` (streaming loaders), ``transforms`` (the one image
transform), ``model`` (AlexNet + weights), ``recipe`` (frozen layers, optimiser, schedule),
``train`` (train_one_epoch / evaluate / main), ``metrics``, ``checkpoint``, ``cv``.
"""
