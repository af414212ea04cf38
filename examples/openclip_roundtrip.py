# By-hand check of issue 13: open_clip from PyPI loads `clusterclip export`'s folder and gives the
# features clusterclip gives (same pixels, same token ids; with a 49408-token vocabulary also the
# same tokenizer ids). Run in a throwaway venv with torch and open_clip_torch 3.3 (never a
# dependency of the project):
#   python examples/openclip_roundtrip.py CHECKPOINT OUT_DIR IMAGE_AT_MODEL_SIZE.png
import json, os, subprocess, sys
import numpy as np, torch, open_clip
from PIL import Image
CC = os.environ.get("CLUSTERCLIP", "target/release/clusterclip")
ck, out, img = sys.argv[1], sys.argv[2], sys.argv[3]
texts = ["a red circle", "a blue square on grass", "a photo of a green triangle"]
subprocess.run([CC, "export", "--checkpoint", ck, "--out", out], check=True)
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + out)
model.eval()
cfg = json.load(open(out + "/open_clip_config.json"))
print("open_clip", open_clip.__version__, "torch", torch.__version__, "model_cfg", json.dumps(cfg["model_cfg"]))
ours = json.loads(subprocess.run([CC, "embed", "--checkpoint", ck, "--image", img] + sum([["--text", t] for t in texts], []),
                                 check=True, capture_output=True, text=True).stdout)
ctx = cfg["model_cfg"]["text_cfg"]["context_length"]; vocab = cfg["model_cfg"]["text_cfg"]["vocab_size"]
ids = json.loads(subprocess.run([CC, "tokenize", "--json", "--context-length", str(ctx), "--vocab-size", str(vocab)] + texts,
                                check=True, capture_output=True, text=True).stdout)
size = cfg["model_cfg"]["vision_cfg"]["image_size"]
pil = Image.open(img).convert("RGB"); assert pil.size == (size, size), pil.size
x = preprocess(pil).unsqueeze(0)  # at model size: only ToTensor + Normalize act
with torch.no_grad():
    fi = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    ft = torch.nn.functional.normalize(model.encode_text(torch.tensor(ids)), dim=-1).numpy()
gi = np.array(ours["image_features"]); gt = np.array(ours["text_features"])
print("image features max |diff|", np.abs(fi - gi).max(), " text features max |diff|", np.abs(ft - gt).max())
print("image·text cosine, open_clip:", np.round(fi @ ft.T, 5).tolist(), " clusterclip:", np.round(gi @ gt.T, 5).tolist())
if vocab == 49408:
    tok = open_clip.get_tokenizer("local-dir:" + out)
    print("open_clip tokenizer ids equal ours:", bool((tok(texts).numpy() == np.array(ids)).all()))
