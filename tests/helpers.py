"""Input generators shared by the kernel tests."""
import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def rand(*shape, dtype=torch.float32, kind="uniform", gen=None):
    """Test operands: 'uniform' in [0, 2); 'ties' small integers (many equal
    values); 'inf' uniform with some +-inf; 'wide' spread over [-50, 50]."""
    if kind == "ties":
        x = torch.randint(0, 3, shape, generator=gen).to(torch.float64)
    elif kind == "wide":
        x = (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5) * 100
    else:
        x = torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    if kind == "inf" and x.numel():
        u = torch.rand(shape, generator=gen)
        x = torch.where(u < 0.1, -torch.inf, torch.where(u > 0.95, torch.inf, x))
    return x.to(dtype)
