import sys, types, json
_t = types.ModuleType('torch'); _t.LongTensor = object; _t.Tensor = object; sys.modules['torch'] = _t
np = types.ModuleType('numpy'); sys.modules.setdefault('numpy', np)
# OpenCLIP's tokenizer.py and its merges file, unpacked from the open_clip_torch wheel:
#   pip download --no-deps open_clip_torch==3.3.0 && unzip open_clip_torch-3.3.0-py3-none-any.whl 'open_clip/*'
# then run with OPEN_CLIP_DIR=path/to/open_clip and the `ftfy` and `regex` packages installed.
import os, importlib.util
spec = importlib.util.spec_from_file_location('tok', os.path.join(os.environ.get('OPEN_CLIP_DIR', 'open_clip'), 'tokenizer.py'))
tok = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tok)
T = tok.SimpleTokenizer()
def ids(text, ctx=77):
    t = [T.sot_token_id] + T.encode(text) + [T.eot_token_id]
    if len(t) > ctx:
        t = t[:ctx]; t[-1] = T.eot_token_id
    return t
if __name__ == '__main__':
    bad = 0
    for line in open(sys.argv[1]):
        o = json.loads(line)
        if ids(o['text'], o['context_length']) != o['ids']:
            bad += 1; print('MISMATCH', o['text'])
    print('golden mismatches', bad)
