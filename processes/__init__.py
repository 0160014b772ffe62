"""serwild.processes: processes, files and failures, below every stage: where a build's tasks run
(executors, Ray started or joined), torchrun's launch and its quiet agent, DDP set-up, folder
locks, atomic writes and the checkpoint file. What an exception means to the user (its exit
status and one line) is :mod:`serwild.errors`, in the core."""
