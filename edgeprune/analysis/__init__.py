"""Understanding pruned models (Tartaglione et al., ICANN 2020): one-shot pruning controls (fine-tune, rewind,
re-init, random structure), PSP-entropy of first and second order, mean squared PSP, top Hessian eigenvalues and
loss maps between solutions.

Modules: :mod:`.masks` (magnitude / random masks, pinning), :mod:`.oneshot`, :mod:`.entropy` (the math),
:mod:`.psp` (collecting PSPs), :mod:`.hessian`, :mod:`.landscape`, :mod:`.plots`, :mod:`.reports` (the CLI jobs).
Submodules are imported on use so ``import edgeprune`` stays light.
"""
