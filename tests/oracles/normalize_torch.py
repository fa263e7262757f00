# Oracle numbers for tests/ops_reduce_test.cpp (L2Normalize.EpsClampFollowsFNormalize) and
# tests/ops_loss_test.cpp (LossTest.ByolLossClampsZeroAndTinyRowsAsFNormalize): torch's
# F.normalize and the official BYOL loss, mean over rows of 2 - 2 <F.normalize(p), F.normalize(z)>,
# forward and backward where the eps clamp decides. Run once with python3-torch 1.13
# (/usr/bin/python3 tests/oracles/normalize_torch.py); the printed lines are pasted into the tests.
import torch
import torch.nn.functional as F
def fmt(name, v): print(name, "= {" + ", ".join("%.9g" % x for x in v) + "};")
# l2_normalize with eps = 1: a row under the clamp (norm 0.5), a row over it (norm 5) and a zero
# row, backward from dy; then the zero row again at the default eps 1e-12.
x = torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
dy = torch.tensor([[1.0, -2.0], [0.5, 1.5], [2.0, -1.0]], dtype=torch.float64)
y = F.normalize(x, dim=1, eps=1.0)
y.backward(dy)
fmt("kY", y.detach().flatten()); fmt("kDx", x.grad.flatten())
x0 = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
F.normalize(x0, dim=1, eps=1e-12).backward(torch.tensor([[2.0, -1.0]], dtype=torch.float64))
fmt("kDxZeroRow", x0.grad.flatten())
# BYOL: p = 0 (the clamp holds pn at 0: cos 0, loss 2), p of norm 1.4e-9 (over eps = 1e-12: a
# unit vector like any other, aligned with z: loss 0), z = 0; both need a gradient.
p = torch.tensor([[0.0, 0.0], [1e-9, 1e-9], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
z = torch.tensor([[3.0, 4.0], [2.0, 2.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
loss = (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)).mean()
loss.backward()
fmt("kByolLoss", [loss.item()]); fmt("kByolDp", p.grad.flatten()); fmt("kByolDz", z.grad.flatten())
