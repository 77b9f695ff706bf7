#!/usr/bin/env bash
# A self-contained export of the tiny demo model, loaded in a fresh virtualenv WITHOUT jbert,
# offline, with transformers' AutoModel (`encode`) and sentence-transformers; prints the largest
# difference from jbert's own embeddings (Embedder) and the versions (docs/export.md). Also every
# head of both layouts (tiny preset) through its Auto class against jbert.model.functional.apply.
#   bash scripts/check_fresh_venv.sh                        # transformers 5, sentence-transformers 6
#   PACKAGES="torch==2.13.0 transformers<5 sentence-transformers<6" \
#       VENV=/tmp/jbert-fresh-tf4 bash scripts/check_fresh_venv.sh   # transformers 4.x
# torch stays 2.13.0: the CPU wheel here; another version pulls a multi-GB CUDA build.
EXTRAS=test source "$(dirname "$0")/env.sh"
VENV="${VENV:-/tmp/jbert-fresh-venv}"
PACKAGES="${PACKAGES:-torch==2.13.0 transformers sentence-transformers}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# 1. jbert: the demo's tiny model (configs/pretrain_tiny.py) from jbert's init, a BPE tokenizer
#    trained on this Python's json and inspect sources, the export and jbert's embeddings.
.venv/bin/python - "$WORK" <<'EOF'
import inspect, json, sys, unittest
from pathlib import Path

import jax
import numpy as np

from configs.pretrain_tiny import get_config
from jbert import functional
from jbert.data.tokenizer import train_tokenizer
from jbert.evaluation.embedder import Embedder
from jbert.hf.save import save_pretrained

work = Path(sys.argv[1])
tokenizer = train_tokenizer([inspect.getsource(m) for m in (json, inspect, unittest)],
                            vocab_size=4096)
config = get_config().model.replace(vocab_size=tokenizer.get_vocab_size())
params = functional.init_params(config, jax.random.key(0))
rng = np.random.default_rng(0)  # off the init: its biases are zero, its LayerNorms one
params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype), params)
save_pretrained(work / "export", config, params, tokenizer, self_contained=True)
texts = [inspect.getsource(json.dumps), "serialize an object to a JSON string",
         "def add(a, b):\n    return a + b\n", "x", inspect.getsource(inspect.getsource)]
emb = Embedder(config, params, tokenizer, max_length=config.max_position_embeddings)
(work / "reference.json").write_text(json.dumps(
    {"texts": texts, "embeddings": emb.encode(texts).tolist()}))

from jbert.model.config import preset
from jbert.hf.save import AUTO_CLASSES

OUTPUTS = {"base": ("last_hidden_state", "pooler_output"),
           "pretraining": ("prediction_logits", "seq_relationship_logits"),
           "question_answering": ("start_logits", "end_logits")}
heads = {}
for name in ("tiny", "tiny-code"):
    for head, auto in AUTO_CLASSES.items():
        config = preset(name, num_labels=3 if head.endswith("_classification") else 2)
        params = functional.init_params(config, jax.random.key(1), head)
        params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
                              params)
        save_pretrained(work / f"{name}-{head}", config, params, head=head, self_contained=True)
        shape = (3, 2, 11) if head == "multiple_choice" else (3, 11)
        ids = rng.integers(5, config.vocab_size, shape)
        mask = np.ones_like(ids)
        mask[1, ..., 6:] = 0
        want = functional.apply(config, params, ids, mask, np.zeros_like(ids), head=head)
        heads[f"{name}-{head}"] = {
            "auto": auto, "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "outputs": {k: np.asarray(want[k]).tolist() for k in OUTPUTS.get(head, ("logits",))}}
(work / "heads.json").write_text(json.dumps(heads))
EOF

# 2. A fresh virtualenv with only torch, transformers and sentence-transformers.
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $PACKAGES
fi

# 3. Load it there, offline, from a directory where jbert cannot be imported.
cd "$WORK"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - <<'EOF'
import importlib.util, json

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

assert importlib.util.find_spec("jbert") is None, "jbert is importable: not a fresh venv"
ref = json.load(open("reference.json"))
want = np.array(ref["embeddings"])
model = AutoModel.from_pretrained("export", trust_remote_code=True)
auto = np.abs(model.encode(ref["texts"]) - want).max()
st = SentenceTransformer("export", trust_remote_code=True, device="cpu")
st_diff = np.abs(st.encode(ref["texts"], normalize_embeddings=True) - want).max()
heads = 0.0
for name, case in json.load(open("heads.json")).items():
    head_model = getattr(transformers, case["auto"]).from_pretrained(name, trust_remote_code=True)
    with torch.no_grad():
        got = head_model.eval()(input_ids=torch.tensor(case["input_ids"]),
                                attention_mask=torch.tensor(case["attention_mask"]))
    heads = max([heads] + [np.abs(got[k].numpy() - np.array(v)).max()
                           for k, v in case["outputs"].items()])
print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                  "sentence_transformers": sentence_transformers.__version__,
                  "texts": len(ref["texts"]), "automodel_encode_max_diff": float(auto),
                  "sentence_transformers_max_diff": float(st_diff),
                  "every_head_both_layouts_max_diff": float(heads)}))
assert max(auto, st_diff, heads) < 1e-4, "outputs differ from jbert's"
EOF
