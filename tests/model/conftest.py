import pytest


@pytest.fixture(scope="session")
def pg():
    """Megatron's global state in this pytest process: one gloo rank, CPU compat layer applied."""
    from model.build import init_megatron

    return init_megatron(seed=1234)
