# Oracle numbers for tests/optimizer_test.cpp (TorchOracle.*): torch.optim.SGD (Nesterov,
# weight decay on the weight only), torch.optim.AdamW, and solo-learn's LARS written out with
# torch ops (with and without its clip_lr), three steps on a (2, 3) weight and a (2) bias. Run once with python3-torch 1.13
# (/usr/bin/python3 tests/oracles/optimizers_torch.py); the printed lines are pasted into the test.
import torch
def init():
    w = torch.tensor([0.1*(i+1)*(-1)**i for i in range(6)], dtype=torch.float64).float().reshape(2,3)
    b = torch.tensor([0.05*(j+1) for j in range(2)], dtype=torch.float64).float()
    return w.clone().requires_grad_(False), b.clone()
def grads(k):
    gw = torch.tensor([0.01*(i-2.5) + 0.02*k*(-1)**i for i in range(6)], dtype=torch.float64).float().reshape(2,3)
    gb = torch.tensor([0.03*(j+1) - 0.01*k for j in range(2)], dtype=torch.float64).float()
    return gw, gb
def run(make_opt, steps=3):
    w, b = init()
    w = torch.nn.Parameter(w); b = torch.nn.Parameter(b)
    opt = make_opt(w, b)
    for k in range(steps):
        gw, gb = grads(k)
        w.grad = gw.clone(); b.grad = gb.clone()
        opt.step()
    return [float(x) for x in w.detach().flatten()] + [float(x) for x in b.detach()]
def fmt(name, v): print(name, "= {" + ", ".join("%.9gf" % x for x in v) + "};")
fmt("kTorchSgd", run(lambda w,b: torch.optim.SGD([{"params":[w],"weight_decay":5e-4},{"params":[b],"weight_decay":0.0}], lr=0.1, momentum=0.9, nesterov=True)))
fmt("kTorchAdamW", run(lambda w,b: torch.optim.AdamW([{"params":[w],"weight_decay":0.05},{"params":[b],"weight_decay":0.0}], lr=0.01)))
# solo-learn's LARS, written out with torch ops
class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr, momentum, weight_decay, eta, eps=1e-8, clip_lr=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps,
                                      clip_lr=clip_lr))
    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                d_p = p.grad
                p_norm = torch.norm(p.data); g_norm = torch.norm(p.grad.data)
                if p.ndim != 1:
                    if p_norm != 0 and g_norm != 0:
                        lars_lr = p_norm / (g_norm + p_norm * g["weight_decay"] + g["eps"])
                        lars_lr *= g["eta"]
                        if g["clip_lr"]:
                            lars_lr = min(lars_lr / g["lr"], 1)
                        d_p = d_p.add(p, alpha=g["weight_decay"])
                        d_p *= lars_lr
                st = self.state[p]
                if "momentum_buffer" not in st:
                    buf = st["momentum_buffer"] = torch.clone(d_p).detach()
                else:
                    buf = st["momentum_buffer"]; buf.mul_(g["momentum"]).add_(d_p)
                p.add_(buf, alpha=-g["lr"])
fmt("kSoloLars", run(lambda w,b: LARS([w,b], lr=0.5, momentum=0.9, weight_decay=1e-4, eta=0.02)))
# clip_lr (solo-learn's CIFAR recipe): the trust ratio here is above lr 0.1, so the clip acts
fmt("kSoloLarsClip", run(lambda w,b: LARS([w,b], lr=0.1, momentum=0.9, weight_decay=1e-4, eta=0.02, clip_lr=True)))
