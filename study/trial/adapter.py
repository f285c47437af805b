"""What a trial trains: the checks on the LoRA adapter it is about to inject."""

from __future__ import annotations


def check_rank(rank: int, targets: str, dims: list[tuple[int, int]], model: str) -> None:
    """ValueError unless ``rank`` fits every targeted layer: a rank above a layer's smaller
    dimension adds nothing an update of that layer can express, only memory (a typo such as
    1000000000 would try to allocate hundreds of GB)."""
    if not dims:
        return
    limit = min(min(i, o) for i, o in dims)
    if rank > limit:
        raise ValueError(
            f"lora.rank {rank} exceeds the smaller dimension of the layers lora.targets={targets} "
            f"selects in {model} ({limit}); use lora.rank <= {limit}"
        )
