"""Training engine building blocks: optimizers (`optim`), EMA (`ema`), LR/penalty schedules
(`schedule`), checkpoints (`checkpoint`), recipes (`config`) and torchrun helpers (`distributed`)."""
