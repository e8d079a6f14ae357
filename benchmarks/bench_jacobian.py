"""Cost of the Jacobian stage (zooscope.jacobian.compute) per sample, for docs/jacobian.md ("Cost").

For the demo's two label-noise architectures (MLP 64-512-512-10 and LeNet with 32 channels and a
512-wide head, random initialisation: the cost does not depend on the weights' values) and a few
sample counts S, each in a fresh interpreter with one thread, it measures the CPU time of each
step of ``model_jacobian`` (per-sample gradients and Grams, eigenvalues and fits, input-output
Jacobian, Hessian SLQ) and the peak RSS (zooscope.jobs.peak_rss). Memory per sample is the slope of the peak RSS
between the two largest S; time per sample is the gradient step's CPU time over S.

The peer: the same Grams from a plain loop of ``torch.autograd.grad``, one sample at a time,
timed in the same interpreter (the ratio is the speed-up of ``vmap(grad)``), and checked to give
the same Gram matrices.

    python benchmarks/bench_jacobian.py            # --samples 128 256 --arch mlp lenet
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np, torch
from torch import nn
from zooscope.models import architectures
from zooscope.jacobian import compute as jacobian
from zooscope.jacobian import hessian
from zooscope.jacobian.data import load_samples
from zooscope.jobs import peak_rss
from zooscope.layers import module_layers

arch, samples = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
model = architectures.build_architecture(arch, {"width": 512, "depth": 2} if arch == "mlp" else {}).eval()
data = load_samples("digits", samples=samples)
x, y = data.x, data.y
layers = module_layers(model)  # the stage's layers, and the parameter each is a view of
params = dict(model.named_parameters())
parameters = list(dict.fromkeys(layer.weight.parameter for layer in layers))
out = {"arch": arch, "samples": samples,
       "weights": sum(layer.weight.matrix(params[layer.weight.parameter]).numel() for layer in layers)}

def clock(key, fn):
    start = time.process_time()
    value = fn()
    out[key] = time.process_time() - start
    return value

grams = clock("gradients_s", lambda: jacobian.jacobian_grams(model, x, y))
clock("fits_s", lambda: jacobian.jacobian_layer_rows(grams))
clock("input_output_s", lambda: jacobian.input_output_singular_values(model, x))
def slq():
    matvec, dim = hessian.hessian_matvec(model, x, y)
    return hessian.slq_density(matvec, dim, steps=20, probes=2)
clock("hessian_s", slq)
out["route"] = grams.route
out["peak_mb"] = peak_rss() / 2**20

def loop():  # the peer: one autograd.grad per sample, Grams from the stacked rows
    rows = {layer.name: [] for layer in layers}
    for xs, ys in zip(x, y):
        loss = nn.functional.cross_entropy(model(xs[None]), ys[None])
        grads = dict(zip(parameters, torch.autograd.grad(loss, [params[p] for p in parameters])))
        for layer in layers:
            rows[layer.name].append(layer.weight.matrix(grads[layer.weight.parameter]).reshape(-1).double())
    return {n: (torch.stack(r) @ torch.stack(r).T).numpy() for n, r in rows.items()}
peer = clock("loop_gradients_s", loop)
out["max_rel_diff"] = max(float(np.abs(grams.gram[n] - peer[n]).max() / np.abs(peer[n]).max()) for n in peer)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--arch", nargs="+", default=["mlp", "lenet"])
    args = parser.parse_args()
    print("arch   S    weights  route  grads s  ms/sample  fits s  io s  hessian s  peak MB  loop s  vmap speed-up  max rel diff")
    for arch in args.arch:
        runs = []
        for samples in args.samples:
            result = subprocess.run([sys.executable, "-c", CHILD, arch, str(samples)], capture_output=True, text=True,
                                    check=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            runs.append(r)
            print(f"{arch:6} {samples:4} {r['weights']:8} {r['route']:6} {r['gradients_s']:7.2f} "
                  f"{1000 * r['gradients_s'] / samples:10.1f} {r['fits_s']:7.2f} {r['input_output_s']:5.2f} "
                  f"{r['hessian_s']:9.2f} {r['peak_mb']:8.0f} {r['loop_gradients_s']:7.2f} "
                  f"{r['loop_gradients_s'] / r['gradients_s']:13.1f}x {r['max_rel_diff']:.1e}", flush=True)
        if len(runs) >= 2:
            a, b = runs[-2], runs[-1]
            slope = (b["peak_mb"] - a["peak_mb"]) / (b["samples"] - a["samples"])
            print(f"{arch}: peak RSS grows {slope:.2f} MB per sample (J in float32: "
                  f"{4 * b['weights'] / 2**20:.2f} MB per sample)")


if __name__ == "__main__":
    main()
