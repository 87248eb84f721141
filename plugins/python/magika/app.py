"""magika, in Python: the same plugin as plugins/magika (Rust), for the same model.

Identifies a file's content type from its bytes, mirroring the `magika` 1.0.3 package
(model `standard_v3_3`, high-confidence mode): the model reads the first and last bytes of
the file, whitespace stripped and padded; files too short for it are `txt` or `unknown` by
whether they are UTF-8, an empty one is `empty`; the model's label goes through the overwrite
map and falls back to `txt`/`unknown` under its threshold.

Built into a WebAssembly component by componentize-py (see docs/plugins.md, "A plugin in Python");
only the standard library is used. Data files at /data: config.min.json and
content_types_kb.min.json, from the magika wheel.

Input `bytes`: BYTES [N], one file per element. Outputs: `label` BYTES [N], `score` FP32 [N],
`mime_type` BYTES [N].
"""

import json
import struct
from functools import cache

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Datatype, PluginError_Internal, PluginError_InvalidInput, Prepared, Tensor


@cache
def data(name):
    """A JSON file under /data, read once per instance."""
    try:
        with open(f"/data/{name}", "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise Err(PluginError_Internal(f"reading /data/{name}: {e}"))


def find(tensors, name):
    for t in tensors:
        if t.name == name:
            return t
    raise Err(PluginError_InvalidInput(f"missing tensor '{name}'"))


def elements(t):
    """A BYTES tensor's elements (each a 4-byte little-endian length, then the bytes)."""
    if t.datatype != Datatype.BYTES:
        raise Err(PluginError_InvalidInput(f"tensor '{t.name}' must be BYTES"))
    out, at = [], 0
    while at < len(t.data):
        if at + 4 > len(t.data):
            raise Err(PluginError_InvalidInput(f"tensor '{t.name}': malformed BYTES data"))
        (n,) = struct.unpack_from("<I", t.data, at)
        if at + 4 + n > len(t.data):
            raise Err(PluginError_InvalidInput(f"tensor '{t.name}': malformed BYTES data"))
        out.append(t.data[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def bytes_tensor(name, items):
    return Tensor(name, Datatype.BYTES, [len(items)], b"".join(struct.pack("<I", len(i)) + i for i in items))


def few(content):
    """What a file too short for the model is."""
    try:
        content.decode("utf-8")
        return "txt"
    except UnicodeDecodeError:
        return "unknown"


# Per file, in the context: 0 = ask the model, else the label decided without it.
FIXED = [None, "empty", "txt", "unknown"]


class WitWorld(wit_world.WitWorld):
    def preprocess(self, inputs, params):
        cfg = data("config.min.json")
        files = elements(find(inputs, "bytes"))
        beg_size, end_size, pad = cfg["beg_size"], cfg["end_size"], cfg["padding_token"]
        features, fixed = [], []
        for f in files:
            block = min(len(f), cfg["block_size"])
            # bytes.strip() strips the same whitespace as Python's magika: b" \t\n\r\x0b\x0c".
            beg = f[:block].lstrip()[:beg_size]
            end = f[len(f) - block :].rstrip()
            end = end[max(0, len(end) - end_size) :]
            features += [*beg, *[pad] * (beg_size - len(beg)), *[pad] * (end_size - len(end)), *end]
            if not f:
                label = "empty"
            elif len(f) < cfg["min_file_size_for_dl"]:
                label = few(f)
            elif len(beg) < cfg["min_file_size_for_dl"]:
                label = few(f[:block])
            else:
                label = None
            fixed.append(FIXED.index(label))
        n = len(files)
        x = Tensor("bytes", Datatype.INT32, [n, beg_size + end_size], struct.pack(f"<{len(features)}i", *features))
        context = Tensor("fixed", Datatype.INT32, [n], struct.pack(f"<{n}i", *fixed))
        return Prepared([x], [context])

    def postprocess(self, outputs, context, params):
        cfg, kb = data("config.min.json"), data("content_types_kb.min.json")
        labels_space = cfg["target_labels_space"]
        scores = find(outputs, "target_label")
        fixed = struct.unpack(f"<{len(find(context, 'fixed').data) // 4}i", find(context, "fixed").data)
        n, classes = len(fixed), len(labels_space)
        if scores.datatype != Datatype.FP32 or scores.shape != [n, classes]:
            raise Err(PluginError_Internal(f"model returned scores of shape {scores.shape} for {n} files"))
        values = struct.unpack(f"<{n * classes}f", scores.data)
        labels, best_scores = [], []
        for i, decided in enumerate(fixed):
            if decided:
                label, score = FIXED[decided], 1.0
            else:
                row = values[i * classes : (i + 1) * classes]
                best = max(range(classes), key=row.__getitem__)
                dl_label, score = labels_space[best], row[best]
                label = cfg["overwrite_map"].get(dl_label, dl_label)
                if score < cfg["thresholds"].get(dl_label, cfg["medium_confidence_threshold"]):
                    label = "txt" if kb.get(label, {}).get("is_text") else "unknown"
            labels.append(label)
            best_scores.append(score)
        mimes = [(kb.get(l, {}).get("mime_type") or "application/octet-stream") for l in labels]
        return [
            bytes_tensor("label", [l.encode() for l in labels]),
            Tensor("score", Datatype.FP32, [n], struct.pack(f"<{n}f", *best_scores)),
            bytes_tensor("mime_type", [m.encode() for m in mimes]),
        ]
