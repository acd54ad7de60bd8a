"""pytest plugin: force the CPU kernel ISA for every test (HUNT_ISA), and the torch thread count (HUNT_THREADS)."""
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _hunt_force_isa():
    torch.set_num_threads(int(os.environ.get("HUNT_THREADS", "1")))
    isa = os.environ.get("HUNT_ISA")
    if not isa:
        yield
        return
    from cpu_common import forced
    with forced(isa=isa):
        yield
