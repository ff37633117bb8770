"""Expert trajectories for trajectory matching: train, store, load, import.

A trajectory-matching method gets its experts with::

    config = ExpertConfig.for_dataset(dataset, model="convnet", num_experts=100, epochs=50)
    store = ensure_experts(dataset, config, context.cache_dir, context.device, notice=context.notice)
    theta_start, theta_target = store.segment(i, start_epoch, expert_epochs)

Modules: ``config`` (what identifies a set of experts and its cache key), ``store`` (the on-disk
format and :class:`ExpertStore`), ``training`` (training and the cache), ``upstream`` (importing
MTT / TESLA ``replay_buffer_<n>.pt`` files) and ``command`` (``dcbench experts``).
"""

from dcbench_tesla.experts.config import (
    ExpertConfig,
    human_bytes,
    model_layout,
    storage_bytes,
)
from dcbench_tesla.experts.store import MANIFEST, ExpertStore, expert_filename
from dcbench_tesla.experts.training import (
    ensure_experts,
    expert_directory,
    expert_seed,
    train_experts,
    train_one_expert,
)
from dcbench_tesla.experts.upstream import import_upstream

__all__ = [
    "MANIFEST",
    "ExpertConfig",
    "ExpertStore",
    "ensure_experts",
    "expert_directory",
    "expert_filename",
    "expert_seed",
    "human_bytes",
    "import_upstream",
    "model_layout",
    "storage_bytes",
    "train_experts",
    "train_one_expert",
]
