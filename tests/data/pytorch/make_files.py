"""Writes torch.save files the way torch 2.x writes them, with the Python standard library only (no torch here).

torch.save(obj, f) pickles obj with protocol 2, replacing every storage by the persistent id
('storage', torch.<Type>Storage, key, location, numel), and writes a zip archive of uncompressed members, each 64-byte
aligned (a 'FB' padding extra field): {prefix}/data.pkl, {prefix}/byteorder ('little'), {prefix}/data/{key} for every
storage, {prefix}/version ('3'), {prefix}/.data/serialization_id. A tensor pickles as
torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, OrderedDict()), an nn.Parameter as
torch._utils._rebuild_parameter(<that tensor>, requires_grad, OrderedDict()), and a module's state_dict() is an
OrderedDict carrying a _metadata attribute. The legacy format (torch < 1.6, _use_new_zipfile_serialization=False) is five
pickles in a row (magic number, protocol 1001, sys_info, the object with 6-tuple persistent ids, the sorted storage keys)
followed by each storage as an int64 element count and its bytes.

Fake torch modules are registered so that pickle writes exactly the globals torch writes. Every file's expected tensors
go to expected.json (name -> dtype, shape, values as Python numbers) for the tests to compare against.

Run: python3 make_files.py [stories260K folder]   (from this folder; the second part is skipped without the folder)
"""
import collections
import io
import json
import math
import os
import pickle
import struct
import sys
import types
import zipfile

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils
torch._utils = torch_utils


def _global(module, name, obj):
    obj.__module__ = module.__name__
    obj.__qualname__ = name
    obj.__name__ = name
    setattr(module, name, obj)
    return obj


def _rebuild_tensor_v2(*args):
    raise AssertionError("never called")


def _rebuild_parameter(*args):
    raise AssertionError("never called")


_global(torch_utils, "_rebuild_tensor_v2", _rebuild_tensor_v2)
_global(torch_utils, "_rebuild_parameter", _rebuild_parameter)

# dtype name -> (storage class name, struct code, element size)
DTYPES = {
    "F32": ("FloatStorage", "f", 4), "F64": ("DoubleStorage", "d", 8), "F16": ("HalfStorage", "e", 2),
    "BF16": ("BFloat16Storage", None, 2), "I64": ("LongStorage", "q", 8), "I32": ("IntStorage", "i", 4),
    "I16": ("ShortStorage", "h", 2), "I8": ("CharStorage", "b", 1), "U8": ("ByteStorage", "B", 1),
    "BOOL": ("BoolStorage", "?", 1),
}
for storage_name, _, _ in DTYPES.values():
    _global(torch, storage_name, type(storage_name, (), {}))


def bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (as torch's .to(torch.bfloat16))."""
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


def bf16_value(bits):
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


class Storage:
    _next = 0

    def __init__(self, dtype, values, key=None):
        self.dtype = dtype
        self.values = list(values)
        self.key = key if key is not None else str(Storage._next)
        Storage._next += 1

    def raw(self):
        _, code, _ = DTYPES[self.dtype]
        if self.dtype == "BF16":
            return b"".join(struct.pack("<H", bf16_bits(v)) for v in self.values)
        return b"".join(struct.pack("<" + code, v) for v in self.values)

    def stored_values(self):
        """The values as the file holds them (rounded to the dtype), as Python numbers."""
        _, code, size = DTYPES[self.dtype]
        raw = self.raw()
        if self.dtype == "BF16":
            return [bf16_value(struct.unpack_from("<H", raw, i * 2)[0]) for i in range(len(self.values))]
        return [struct.unpack_from("<" + code, raw, i * size)[0] for i in range(len(self.values))]


class Tensor:
    def __init__(self, storage, offset, shape, stride=None, parameter=False):
        self.storage, self.offset, self.shape, self.parameter = storage, offset, tuple(shape), parameter
        if stride is None:
            stride, step = [], 1
            for d in reversed(self.shape):
                stride.insert(0, step)
                step *= d
        self.stride = tuple(stride)

    def __reduce_ex__(self, protocol):
        plain = (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, self.parameter, collections.OrderedDict()))
        if self.parameter:
            inner = Tensor(self.storage, self.offset, self.shape, self.stride)
            return (_rebuild_parameter, (inner, True, collections.OrderedDict()))
        return plain

    def values(self):
        """Elements in row-major order through the strides."""
        stored = self.storage.stored_values()
        out = []

        def walk(dim, at):
            if dim == len(self.shape):
                out.append(stored[at])
                return
            for i in range(self.shape[dim]):
                walk(dim + 1, at + i * self.stride[dim])

        walk(0, self.offset)
        return out


def new_tensor(dtype, shape, f, parameter=False):
    n = math.prod(shape)
    return Tensor(Storage(dtype, [f(i) for i in range(n)]), 0, shape, parameter=parameter)


def persistent_id_legacy(obj):
    if isinstance(obj, Storage):
        return ("storage", getattr(torch, DTYPES[obj.dtype][0]), obj.key, "cpu", len(obj.values), None)
    return None


def storages_of(obj, found):
    if isinstance(obj, Tensor):
        found[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            storages_of(v, found)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            storages_of(v, found)
    return found


class AlignedZip:
    """torch's PyTorchFileWriter: stored members whose data starts on a 64-byte boundary."""

    def __init__(self, path, force_zip64=False):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED)
        self.force_zip64 = force_zip64

    def write(self, name, data):
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        start = self.zip.fp.tell()
        header = 30 + len(name.encode()) + (20 if self.force_zip64 else 0)
        pad = (-(start + header + 4)) % 64
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        with self.zip.open(info, "w", force_zip64=self.force_zip64) as f:
            f.write(data)
        assert (start + header + 4 + pad) % 64 == 0 or self.force_zip64

    def close(self):
        self.zip.close()


def save_zip(obj, path, prefix="archive", force_zip64=False):
    # As torch's _save: storage keys are "0", "1", … in the order the pickler first meets each storage.
    keys = {}

    def persistent_id(o):
        if isinstance(o, Storage):
            key = keys.setdefault(id(o), (str(len(keys)), o))[0]
            return ("storage", getattr(torch, DTYPES[o.dtype][0]), key, "cpu", len(o.values))
        return None
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.persistent_id = persistent_id
    p.dump(obj)
    z = AlignedZip(path, force_zip64)
    z.write(f"{prefix}/data.pkl", buf.getvalue())
    z.write(f"{prefix}/byteorder", b"little")
    for key, storage in sorted(keys.values()):
        z.write(f"{prefix}/data/{key}", storage.raw())
    z.write(f"{prefix}/version", b"3\n")
    z.write(f"{prefix}/.data/serialization_id", b"1234567890123456789012345678901234567890")
    z.close()


def save_legacy(obj, path):
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        p = pickle.Pickler(f, protocol=2)
        p.persistent_id = persistent_id_legacy
        p.dump(obj)
        storages = storages_of(obj, {})
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            s = storages[key]
            f.write(struct.pack("<q", len(s.values)))
            f.write(s.raw())


def state_dict(items):
    sd = collections.OrderedDict(items)
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("layer", {"version": 1})])
    return sd


class Config:  # a class Loupe must not build (a training run's config object)
    def __init__(self):
        self.lr = 0.001


trainer_config = types.ModuleType("trainer.config")
sys.modules["trainer.config"] = trainer_config
sys.modules["trainer"] = types.ModuleType("trainer")
_global(trainer_config, "Config", Config)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


expected = {}


def record(file, tensors):
    expected[file] = {
        name: {"dtype": t.storage.dtype, "shape": list(t.shape), "values": t.values()} for name, t in tensors.items()
    }


def main():
    # 1. A state dict with every dtype, a parameter, tied weights, a view at a storage offset, a scalar and an empty tensor.
    embed = new_tensor("F32", (4, 3), lambda i: math.sin(0.37 * i + 0.1), parameter=True)
    shared = Storage("F32", [0.5 * i - 2.0 for i in range(12)])
    t = {
        "embed.weight": embed,
        "lm_head.weight": Tensor(embed.storage, 0, (4, 3)),  # tied: the same storage
        "layer.bias": new_tensor("F32", (4,), lambda i: -1.5 + i),
        "layer.half": new_tensor("F16", (2, 3), lambda i: 0.1 * i - 0.25),
        "layer.bf16": new_tensor("BF16", (5,), lambda i: math.cos(i) * 3.0),
        "layer.double": new_tensor("F64", (2, 2), lambda i: 1.0 / (i + 3)),
        "layer.rows_1_2": Tensor(shared, 3, (2, 3)),  # rows 1..2 of a [4, 3] storage
        "layer.whole": Tensor(shared, 0, (4, 3)),
        "step": new_tensor("I64", (), lambda i: 1234567890123),
        "ids": new_tensor("I32", (3,), lambda i: i * 1000 - 7),
        "mask": new_tensor("BOOL", (4,), lambda i: i % 3 == 0),
        "bytes": new_tensor("U8", (3,), lambda i: 250 + i),
        "small": new_tensor("I8", (2,), lambda i: -100 + 7 * i),
        "shorts": new_tensor("I16", (2,), lambda i: -30000 + i),
        "empty": new_tensor("F32", (0, 5), lambda i: 0.0),
    }
    save_zip(state_dict(t), "state_dict.pt")
    record("state_dict.pt", t)

    # 2. A training checkpoint: nested dicts, numbers, strings, a list of tensors, an object of an unknown class.
    inner = {"w": new_tensor("F32", (2, 2), lambda i: i + 0.25), "b": new_tensor("F32", (2,), lambda i: -i)}
    moments = [new_tensor("F32", (2,), lambda i: 10.0 + i), new_tensor("F32", (2,), lambda i: 20.0 + i)]
    save_zip({"state_dict": state_dict(inner), "epoch": 3, "hparams": {"lr": 0.001, "name": "run-7"},
              "moments": moments, "config": Config()}, "checkpoint.pt", prefix="checkpoint")
    record("checkpoint.pt", {"state_dict.w": inner["w"], "state_dict.b": inner["b"], "moments.0": moments[0], "moments.1": moments[1]})

    # 3. The legacy format (torch < 1.6), storage keys as torch wrote them (str(id(storage))).
    legacy = {"weight": new_tensor("F32", (3, 2), lambda i: 2.0 ** -i), "bias": new_tensor("F16", (3,), lambda i: 0.5 * i)}
    legacy["weight"].storage.key, legacy["bias"].storage.key = "140321987654320", "140321987654208"
    save_legacy(state_dict(legacy), "legacy.bin")
    record("legacy.bin", legacy)

    # 4. zip64 headers (what a file over 4 GiB needs), forced on a small file.
    z64 = {"w": new_tensor("F32", (3,), lambda i: 7.0 - i)}
    save_zip(state_dict(z64), "zip64.pt", force_zip64=True)
    record("zip64.pt", z64)

    # 5. Strided views, as checkpoints hold them (a transposed weight; every other column of a storage; a view at an
    #    offset), beside the contiguous storage they share.
    base = Storage("F32", [float(i) for i in range(12)])
    views = {"w": Tensor(base, 0, (3, 2), (1, 3)), "base": Tensor(base, 0, (3, 4)),
             "every_other": Tensor(base, 1, (3, 2), (4, 2)), "rows_0_2": Tensor(base, 0, (2, 4), (8, 1)),
             "half": new_tensor("F16", (2, 3), lambda i: 0.5 * i)}
    views["half_t"] = Tensor(views["half"].storage, 0, (3, 2), (1, 3))
    save_zip(state_dict(views), "strided.pt")
    record("strided.pt", views)
    # Refused: an expand() (stride 0) repeats one element; it could ask a small file for any amount of memory.
    save_zip(state_dict({"w": Tensor(Storage("F32", [1.0]), 0, (1000, 1000), (0, 0))}), "expand.pt")

    # 6. A pickle that would run a shell command under pickle.load: Loupe must read the tensor and build nothing else.
    evil = {"w": new_tensor("F32", (2,), lambda i: 1.0 + i)}
    save_zip({"w": evil["w"], "payload": Evil()}, "evil.pt")
    record("evil.pt", evil)

    # 6b. Refused: torch.save(model), a whole module pickled (its tensors sit in the module's own state, never built).
    class Module:
        def __reduce_ex__(self, protocol):
            return (Config, (), {"_parameters": collections.OrderedDict([("weight", new_tensor("F32", (2,), lambda i: 1.0))])})
    save_zip(Module(), "whole_module.pt")

    # 7. Refused: a TorchScript archive (no data.pkl).
    z = AlignedZip("torchscript.pt")
    z.write("model/constants.pkl", pickle.dumps((), protocol=2))
    z.write("model/code/__torch__.py", b"class Model: pass\n")
    z.write("model/version", b"3\n")
    z.close()

    # 8. A tuned lens as tuned-lens saves it: torch.save(layer_translators.state_dict(), "params.pt") + its config.json.
    os.makedirs("tuned-lens", exist_ok=True)
    lens = {}
    for layer in range(2):
        lens[f"{layer}.weight"] = new_tensor("F32", (4, 4), lambda i, l=layer: (l + 1) * 0.01 * (i - 7.5))
        lens[f"{layer}.bias"] = new_tensor("F32", (4,), lambda i, l=layer: 0.1 * i - l)
    save_zip(state_dict(lens), "tuned-lens/params.pt", prefix="params")
    with open("tuned-lens/config.json", "w") as f:
        json.dump({"base_model_name_or_path": "stories-d4", "d_model": 4, "num_hidden_layers": 2, "bias": True,
                   "base_model_revision": None, "unembed_hash": None, "lens_type": "linear_tuned_lens"}, f)
    record("tuned-lens/params.pt", lens)

    with open("expected.json", "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)

    write_dictionary_learning()

    if len(sys.argv) > 1:
        convert_model(sys.argv[1])


# ---- dictionary_learning (saprmarks/dictionary_learning): ae.pt + config.json per trainer ---------------------------------
# Each dictionary class's encode/decode below is a line-by-line transcription of dictionary_learning's (dictionary.py,
# trainers/top_k.py, trainers/matryoshka_batch_top_k.py) into plain Python, used to write the outputs the tests expect.

D, F = 6, 10


def mat(rows, cols, f):
    return [[f(r, c) for c in range(cols)] for r in range(rows)]


def matvec(w, x):  # w [out][in] · x [in]
    return [sum(wr[j] * x[j] for j in range(len(x))) for wr in w]


def vecmat(x, w):  # x [rows] · w [rows][cols]
    return [sum(x[r] * w[r][c] for r in range(len(x))) for c in range(len(w[0]))]


def relu(v):
    return [max(a, 0.0) for a in v]


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def t32(rows):  # round to float32, as the file stores them
    return [[f32(v) for v in r] for r in rows] if isinstance(rows[0], list) else [f32(v) for v in rows]


def tensor_of(values, shape, dtype="F32"):
    flat = [v for r in values for v in r] if shape and len(shape) == 2 else (values if isinstance(values, list) else [values])
    return Tensor(Storage(dtype, flat), 0, shape)


X = t32(mat(5, D, lambda r, c: math.sin(1.3 * r + 0.7 * c) * (1 + 0.3 * r)))


def write_dl(name, dict_class, trainer_class, tensors, extra_trainer, encode, decode, config=True, submodule="resid_post_layer_3"):
    folder = os.path.join("dictionary_learning", name)
    os.makedirs(folder, exist_ok=True)
    save_zip(state_dict(tensors), os.path.join(folder, "ae.pt"), prefix="ae")
    if config:
        trainer = {"dict_class": dict_class, "trainer_class": trainer_class, "activation_dim": D, "dict_size": F, "lr": 0.0003,
                   "seed": 0, "layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": submodule, "device": "cuda:0"}
        trainer.update(extra_trainer)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"trainer": trainer, "buffer": {"d_submodule": D, "io": "out", "n_ctxs": 3000, "ctx_len": 128,
                                                       "refresh_batch_size": 32, "out_batch_size": 4096, "device": "cuda:0"}}, f, indent=4)
    latents = [encode(x) for x in X]
    expected["dictionary_learning/" + name] = {"x": X, "latents": latents, "recon": [decode(f) for f in latents]}


def write_dictionary_learning():
    w_enc_lin = t32(mat(F, D, lambda r, c: math.cos(0.9 * r - 0.4 * c) * 0.6))      # nn.Linear(D, F).weight [F, D]
    b_enc = t32([0.05 * ((i * 7) % 5) - 0.1 for i in range(F)])
    w_dec_lin = t32(mat(D, F, lambda r, c: math.sin(0.5 * c + 1.1 * r) * 0.4))      # nn.Linear(F, D).weight [D, F]
    b_dec = t32([0.1 * i - 0.2 for i in range(D)])

    def linear_dec(f, bias):
        return [a + b for a, b in zip(matvec(w_dec_lin, f), bias)]

    # AutoEncoder: encode ReLU(encoder(x - bias)); decode decoder(f) + bias.
    def ae_encode(x):
        return relu([a + b for a, b in zip(matvec(w_enc_lin, [xi - bi for xi, bi in zip(x, b_dec)]), b_enc)])
    ae = {"bias": tensor_of(b_dec, (D,)), "encoder.weight": tensor_of(w_enc_lin, (F, D)), "encoder.bias": tensor_of(b_enc, (F,)),
          "decoder.weight": tensor_of(w_dec_lin, (D, F))}
    write_dl("standard", "AutoEncoder", "StandardTrainer", ae, {"l1_penalty": 0.04}, ae_encode, lambda f: linear_dec(f, b_dec))
    # The 2024 Sparse Feature Circuits release: ae.pt alone, in a folder named after the submodule.
    write_dl("resid_out_layer3", "AutoEncoder", "", ae, {}, ae_encode, lambda f: linear_dec(f, b_dec), config=False)

    # AutoEncoderNew: encode ReLU(encoder(x)); decode decoder(f) (+ its bias).
    def new_encode(x):
        return relu([a + b for a, b in zip(matvec(w_enc_lin, x), b_enc)])
    write_dl("new", "AutoEncoderNew", "StandardTrainerNew",
             {"encoder.weight": tensor_of(w_enc_lin, (F, D)), "encoder.bias": tensor_of(b_enc, (F,)),
              "decoder.weight": tensor_of(w_dec_lin, (D, F)), "decoder.bias": tensor_of(b_dec, (D,))},
             {}, new_encode, lambda f: linear_dec(f, b_dec), submodule="mlp_out_layer_2")

    # AutoEncoderTopK: top-k of ReLU(encoder(x - b_dec)) (its default encode; the threshold buffer is not used).
    k = 3

    def topk_encode(x):
        post = ae_encode(x)
        keep = sorted(range(F), key=lambda i: -post[i])[:k]
        return [post[i] if i in keep else 0.0 for i in range(F)]
    write_dl("topk", "AutoEncoderTopK", "TopKTrainer",
             {"encoder.weight": tensor_of(w_enc_lin, (F, D)), "encoder.bias": tensor_of(b_enc, (F,)),
              "decoder.weight": tensor_of(w_dec_lin, (D, F)), "b_dec": tensor_of(b_dec, (D,)),
              "k": tensor_of(k, (), "I32"), "threshold": tensor_of(f32(0.2), ())},
             {"k": k, "auxk_alpha": 1 / 32}, topk_encode, lambda f: linear_dec(f, b_dec), submodule="attn_out_layer_1")

    # BatchTopKSAE: encode (use_threshold=True) post * (post > threshold).
    thr = f32(0.15)

    def batch_encode(x):
        post = ae_encode(x)
        return [p if p > thr else 0.0 for p in post]
    write_dl("batch_topk", "BatchTopKSAE", "BatchTopKTrainer",
             {"encoder.weight": tensor_of(w_enc_lin, (F, D)), "encoder.bias": tensor_of(b_enc, (F,)),
              "decoder.weight": tensor_of(w_dec_lin, (D, F)), "b_dec": tensor_of(b_dec, (D,)),
              "k": tensor_of(k, (), "I32"), "threshold": tensor_of(thr, ())},
             {"k": k}, batch_encode, lambda f: linear_dec(f, b_dec))

    # MatryoshkaBatchTopKSAE: W_enc [D, F], W_dec [F, D] as parameters; relu((x - b_dec) @ W_enc + b_enc) * (> threshold).
    W_enc = [[w_enc_lin[c][r] for c in range(F)] for r in range(D)]
    W_dec = [[w_dec_lin[c][r] for c in range(D)] for r in range(F)]

    def mat_encode(x):
        pre = [a + b for a, b in zip(vecmat([xi - bi for xi, bi in zip(x, b_dec)], W_enc), b_enc)]
        return [p if p > thr else 0.0 for p in relu(pre)]
    write_dl("matryoshka", "MatryoshkaBatchTopKSAE", "MatryoshkaBatchTopKTrainer",
             {"k": tensor_of(k, (), "I32"), "threshold": tensor_of(thr, ()), "group_sizes": tensor_of([3, 3, 4], (3,), "I64"),
              "W_enc": tensor_of(W_enc, (D, F)), "b_enc": tensor_of(b_enc, (F,)), "W_dec": tensor_of(W_dec, (F, D)), "b_dec": tensor_of(b_dec, (D,))},
             {"k": k, "group_fractions": [0.3, 0.3, 0.4], "group_weights": [1 / 3] * 3, "group_sizes": [3, 3, 4]},
             mat_encode, lambda f: [a + b for a, b in zip(vecmat(f, W_dec), b_dec)])

    # JumpReluAutoEncoder: decoder rows of varied norms; f = ReLU(pre * (pre > threshold)) * ||W_dec row||, and decode
    # divides by it again (apply_b_dec_to_input False, as a saved state dict loads).
    W_dec_j = [[v * (0.5 + 0.15 * r) for v in row] for r, row in enumerate(W_dec)]
    theta = t32([0.04 * i - 0.1 for i in range(F)])
    norms = [math.sqrt(sum(f32(v) ** 2 for v in row)) for row in t32(W_dec_j)]

    def jump_encode(x):
        pre = [a + b for a, b in zip(vecmat(x, W_enc), b_enc)]
        return [max(p * (1.0 if p > t else 0.0), 0.0) * n for p, t, n in zip(pre, theta, norms)]

    def jump_decode(f):
        g = [a / n for a, n in zip(f, norms)]
        return [a + b for a, b in zip(vecmat(g, t32(W_dec_j)), b_dec)]
    write_dl("jumprelu", "JumpReluAutoEncoder", "JumpReluTrainer",
             {"W_enc": tensor_of(W_enc, (D, F)), "b_enc": tensor_of(b_enc, (F,)), "W_dec": tensor_of(t32(W_dec_j), (F, D)),
              "b_dec": tensor_of(b_dec, (D,)), "threshold": tensor_of(theta, (F,))},
             {"sparsity_penalty": 1.0, "bandwidth": 0.001}, jump_encode, jump_decode)

    # GatedAutoEncoder: x_enc = encoder(x - decoder_bias); f = (x_enc + gate_bias > 0) * ReLU(exp(r_mag) * x_enc + mag_bias);
    # decode decoder(f) + decoder_bias. Biases chosen so that some latents are gated off while their magnitude is positive,
    # some gated on with a negative magnitude (ReLU'd to 0), and some thresholds b_mag - exp(r)·b_gate are negative.
    r_mag = t32([0.3 * math.sin(1.7 * i) - 0.1 for i in range(F)])
    gate_bias = t32([0.12 * ((i * 3) % 7) - 0.35 for i in range(F)])
    mag_bias = t32([0.09 * ((i * 5) % 6) - 0.2 for i in range(F)])

    def gated_encode(x):
        x_enc = matvec(w_enc_lin, [xi - bi for xi, bi in zip(x, b_dec)])
        gate = [1.0 if u + g > 0 else 0.0 for u, g in zip(x_enc, gate_bias)]
        mag = relu([math.exp(r) * u + m for r, u, m in zip(r_mag, x_enc, mag_bias)])
        return [a * b for a, b in zip(gate, mag)]
    write_dl("gated", "GatedAutoEncoder", "GatedSAETrainer",
             {"decoder_bias": tensor_of(b_dec, (D,)), "encoder.weight": tensor_of(w_enc_lin, (F, D)),
              "r_mag": tensor_of(r_mag, (F,)), "gate_bias": tensor_of(gate_bias, (F,)), "mag_bias": tensor_of(mag_bias, (F,)),
              "decoder.weight": tensor_of(w_dec_lin, (D, F))}, {"l1_penalty": 0.1}, gated_encode, lambda f: linear_dec(f, b_dec))
    with open("expected.json", "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        begin, end = info["data_offsets"]
        values = list(struct.unpack(f"<{(end - begin) // 4}f", data[begin:end]))
        out[name] = Tensor(Storage("F32", values), 0, tuple(info["shape"]))
    return out


def convert_model(folder):
    """stories260K as Hugging Face wrote pytorch_model.bin shards before safetensors: two shards and their index."""
    tensors = read_safetensors(os.path.join(folder, "model.safetensors"))
    # Tied weights share one storage, as in a real state dict.
    tensors["lm_head.weight"] = Tensor(tensors["model.embed_tokens.weight"].storage, 0, tensors["lm_head.weight"].shape)
    out = "stories260K-bin"
    os.makedirs(out, exist_ok=True)
    names = list(tensors)
    half = len(names) // 2
    shards = {"pytorch_model-00001-of-00002.bin": names[:half], "pytorch_model-00002-of-00002.bin": names[half:]}
    weight_map = {}
    for shard, members in shards.items():
        save_zip(state_dict([(n, tensors[n]) for n in members]), os.path.join(out, shard), prefix="pytorch_model")
        weight_map.update({n: shard for n in members})
    total = sum(4 * math.prod(t.shape) for t in tensors.values())
    with open(os.path.join(out, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    for extra in ("config.json", "tokenizer.json"):
        with open(os.path.join(folder, extra), "rb") as src, open(os.path.join(out, extra), "wb") as dst:
            dst.write(src.read())


if __name__ == "__main__":
    main()
