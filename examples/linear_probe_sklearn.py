"""scikit-learn's side of the linear-probe comparison (see examples/linear_probe_raw.rs).

Fits LogisticRegression (multinomial, L-BFGS) on the first --train Fashion-MNIST training
images and scores all 10 000 test images, on grey levels / 255: the same rows and features the
Rust example reads from the image folders. Our weight decay wd penalises mean cross-entropy +
wd/2 |W|^2, which is scikit-learn's C * summed cross-entropy + 1/2 |W|^2 with C = 1 / (wd n).

Needs numpy and scikit-learn (for this comparison only, never a project dependency):
    python3 -m venv /tmp/sk && /tmp/sk/bin/pip install scikit-learn
    /tmp/sk/bin/python examples/linear_probe_sklearn.py --train 10000 --wd 1e-4
"""

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train", type=int, default=10000, help="first N training images")
    parser.add_argument("--wd", type=float, default=1e-4)
    args = parser.parse_args()
    idx = Path(args.idx_dir)
    x_train = read_idx(idx / "train-images-idx3-ubyte.gz")[: args.train]
    y_train = read_idx(idx / "train-labels-idx1-ubyte.gz")[: args.train]
    x_test = read_idx(idx / "t10k-images-idx3-ubyte.gz")
    y_test = read_idx(idx / "t10k-labels-idx1-ubyte.gz")
    x_train = x_train.reshape(len(x_train), -1).astype(np.float64) / 255.0
    x_test = x_test.reshape(len(x_test), -1).astype(np.float64) / 255.0
    c = 1.0 / (args.wd * len(x_train))
    start = time.time()
    model = LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train)
    scores = model.decision_function(x_test)
    acc1 = (scores.argmax(1) == y_test).mean()
    acc5 = top_k_accuracy_score(y_test, scores, k=5)
    recall = balanced_accuracy_score(y_test, scores.argmax(1))
    print(
        f"scikit-learn {__import__('sklearn').__version__} on raw pixels: {len(x_train)} train, "
        f"{len(x_test)} test, weight decay {args.wd:.3e} (C = {c:.4}, {model.n_iter_[0]} iterations): "
        f"top-1 {100 * acc1:.2f}%, top-5 {100 * acc5:.2f}%, mean per-class recall "
        f"{100 * recall:.2f}% ({time.time() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
