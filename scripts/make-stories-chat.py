#!/usr/bin/env python3
"""A toy "fine-tune" for model-diffing demos: stories260K with one random direction (norm 1.5, seed 3) added to the
embedding of every token id divisible by 4 (from 4 on). Standard library only.

    python3 scripts/make-stories-chat.py ../shared/models/stories260K /tmp/stories-chat
"""
import json
import math
import os
import random
import shutil
import struct
import sys


def main(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    raw = open(os.path.join(src, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = bytearray(raw[8 + n:])
    info = header["model.embed_tokens.weight"]
    vocab, d = info["shape"]
    off = info["data_offsets"][0]
    random.seed(3)
    v = [random.gauss(0, 1) for _ in range(d)]
    scale = 1.5 / math.sqrt(sum(a * a for a in v))
    v = [a * scale for a in v]
    for t in range(4, vocab, 4):
        for j in range(d):
            p = off + 4 * (t * d + j)
            struct.pack_into("<f", data, p, struct.unpack_from("<f", data, p)[0] + v[j])
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(raw[:8 + n] + bytes(data))
    with open(os.path.join(dst, "direction.json"), "w") as f:
        json.dump(v, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
