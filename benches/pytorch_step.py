"""Side-by-side reference for `clusterclip bench step`: the same CLIP training step in PyTorch.

Not a dependency of clusterclip: run it by hand where torch is installed, on the same machine and
in the same session as `clusterclip bench step`, and compare the two as a ratio.

    python3 benches/pytorch_step.py --preset tiny --batch-size 64 --mask none
    python3 benches/pytorch_step.py --preset tiny --batch-size 64 --mask random --mask-ratio 0.5

The model follows OpenCLIP's ViT/text towers (pre-norm blocks, nn.MultiheadAttention, GELU MLP,
class-token pooling, ln_post + projection, causal text mask, EOT pooling) with FLIP's random
masking (keep the patches with the smallest noise) and AdamW, as src/model and src/train do.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # image_size, patch, width, layers, heads | context, vocab, width, layers, heads | embed
    "tiny": dict(image=64, patch=8, vw=192, vl=4, vh=3, ctx=32, vocab=1000, tw=192, tl=4, th=3, embed=192),
    "s16": dict(image=224, patch=16, vw=384, vl=12, vh=6, ctx=77, vocab=49408, tw=384, tl=12, th=6, embed=384),
    "b16": dict(image=224, patch=16, vw=768, vl=12, vh=12, ctx=77, vocab=49408, tw=512, tl=12, th=8, embed=512),
}


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Clip(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        grid = c["image"] // c["patch"]
        self.conv1 = nn.Conv2d(3, c["vw"], c["patch"], c["patch"], bias=False)
        self.class_embedding = nn.Parameter(torch.randn(c["vw"]) * c["vw"] ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, c["vw"]) * c["vw"] ** -0.5)
        self.ln_pre = nn.LayerNorm(c["vw"])
        self.visual = nn.ModuleList([Block(c["vw"], c["vh"]) for _ in range(c["vl"])])
        self.ln_post = nn.LayerNorm(c["vw"])
        self.proj = nn.Parameter(torch.randn(c["vw"], c["embed"]) * c["vw"] ** -0.5)
        self.token_embedding = nn.Embedding(c["vocab"], c["tw"])
        self.text_positional = nn.Parameter(torch.randn(c["ctx"], c["tw"]) * 0.01)
        self.text = nn.ModuleList([Block(c["tw"], c["th"]) for _ in range(c["tl"])])
        self.ln_final = nn.LayerNorm(c["tw"])
        self.text_projection = nn.Parameter(torch.randn(c["tw"], c["embed"]) * c["tw"] ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.659260))
        self.register_buffer("causal", torch.full((c["ctx"], c["ctx"]), float("-inf")).triu(1))

    def encode_image(self, images, keep):
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [B, L, W]
        x = x + self.positional_embedding[1:]
        if keep is not None:  # FLIP: the kept patches only, positions added before the gather
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.class_embedding + self.positional_embedding[0]).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        for block in self.visual:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj

    def encode_text(self, tokens):
        x = self.token_embedding(tokens) + self.text_positional
        for block in self.text:
            x = block(x, self.causal)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        return eot @ self.text_projection

    def loss(self, images, tokens, keep):
        img = F.normalize(self.encode_image(images, keep), dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        labels = torch.arange(images.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mask", default="none", choices=["none", "random"])
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = PRESETS[args.preset]
    model = Clip(c)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    b = args.batch_size
    images = torch.randn(b, 3, c["image"], c["image"])
    tokens = torch.randint(1, c["vocab"] - 1, (b, c["ctx"]))
    tokens[:, -1] = c["vocab"] - 1
    patches = (c["image"] // c["patch"]) ** 2
    kept = round(patches * (1 - args.mask_ratio))

    def step():
        start = time.perf_counter()
        keep = None
        if args.mask == "random":
            keep = torch.rand(b, patches).argsort(dim=1)[:, :kept]
        loss = model.loss(images, tokens, keep)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.605170)
        return time.perf_counter() - start

    step()
    seconds = statistics.median(step() for _ in range(args.repeats))
    result = {
        "preset": args.preset,
        "batch_size": b,
        "mask": args.mask,
        "seconds_per_step": seconds,
        "images_per_s": b / seconds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {args.preset} batch {b} mask {args.mask}: {seconds:.3f} s/step, "
              f"{b / seconds:.1f} images/s (torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
