"""serwild.trainer: torchrun DDP fine-tuning from the WebDataset shards (``serwild train``:
launch.py; ``torchrun -m serwild.trainer``: __main__.py). docs/architecture.md lists the
modules in the order a run uses them."""
