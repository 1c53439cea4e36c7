"""SVCCA's per-set basis (ops/svcca.py): every backend against the torch reference. The metric
itself is checked against the dense reference in test_metrics.py."""

import pytest
import torch

from platonic_fast.ops.svcca import canonical_correlations, svcca_basis

from conftest import backend_device_params, randn


@pytest.mark.parametrize("backend,device", backend_device_params("svcca"))
@pytest.mark.parametrize("n,d,cca_dim", [(5, 3, 2), (257, 65, 10)])
def test_basis_is_orthonormal_and_matches_torch(backend, device, n, d, cca_dim):
    x = randn(n, d, seed=n)
    u = svcca_basis(x.to(device), cca_dim, backend=backend).cpu()
    assert u.shape == (n, cca_dim) and u.dtype == torch.float64
    torch.testing.assert_close(u.T @ u, torch.eye(cca_dim, dtype=torch.float64), atol=1e-10, rtol=0)
    ref = svcca_basis(x, cca_dim, backend="torch")
    # the same subspace (singular vectors are defined up to sign)
    assert canonical_correlations(u, ref).min() == pytest.approx(1.0, abs=1e-9)
