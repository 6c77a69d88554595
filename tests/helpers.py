"""Input generators shared by the kernel tests."""
import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def rand(*shape, dtype=torch.float32, kind="uniform", gen=None):
    """Test operands: 'uniform' in [0, 2); 'ties' small integers (many equal
    values); 'inf' uniform with some +-inf; 'wide' spread over [-50, 50];
    'signed' integers in [-2, 2] with zeros of both signs and some +-inf;
    'negative' in (-2, 0] with some -0.0 and -inf (every min compares two
    negatives).

    The CPU hard kernels take another instruction path for blocks holding
    values below zero (other than -inf), -0.0 included: 'wide', 'signed' and
    'negative' reach it, the others stay on the non-negative one."""
    if kind == "ties":
        x = torch.randint(0, 3, shape, generator=gen).to(torch.float64)
    elif kind == "negative":
        x = -torch.rand(shape, generator=gen, dtype=torch.float64) * 2
        u = torch.rand(shape, generator=gen)
        x = torch.where(u < 0.05, -0.0, torch.where(u > 0.95, -torch.inf, x))
    elif kind == "signed":
        x = torch.randint(-2, 3, shape, generator=gen).to(torch.float64)
        u = torch.rand(shape, generator=gen)
        x = torch.where(u < 0.15, -0.0, torch.where(u < 0.2, -torch.inf, torch.where(u > 0.95, torch.inf, x)))
    elif kind == "wide":
        x = (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5) * 100
    else:
        x = torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    if kind == "inf" and x.numel():
        u = torch.rand(shape, generator=gen)
        x = torch.where(u < 0.1, -torch.inf, torch.where(u > 0.95, torch.inf, x))
    return x.to(dtype)
