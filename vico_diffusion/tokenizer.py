"""Tokenizers that need no download, and the mapping from prompt words to
token positions.

`clip_tokenizer()` builds a real CLIP BPE tokenizer (the one Stable Diffusion,
ZeroScope, ModelScope and AnimateDiff use) from the vocabulary that ships
inside the `open_clip_torch` wheel (install it with `--no-deps`; the package
itself is never imported). `word_token_indices` maps words to the positions
they occupy in the padded prompt, through the tokenizer's character offsets,
so a word split into several tokens maps to all of them.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import tempfile

_SPECIAL_EOT = {"<eot>", "<eos>", "<|endoftext|>", "</s>"}


def _bytes_to_unicode() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab_files(cache_dir: str | None = None) -> tuple[str, str]:
    """(vocab.json, merges.txt) of OpenAI's CLIP BPE, written once from the
    `bpe_simple_vocab_16e6.txt.gz` inside the installed open_clip_torch wheel."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the CLIP vocabulary ships in the open_clip_torch wheel: pip install --no-deps open_clip_torch"
        )
    bpe = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "vico-clip-tokenizer")
    vocab_path, merges_path = os.path.join(cache_dir, "vocab.json"), os.path.join(cache_dir, "merges.txt")
    if os.path.exists(vocab_path) and os.path.exists(merges_path):
        return vocab_path, merges_path
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir)  # write then rename: concurrent builders never see half a file
    with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    os.replace(os.path.join(tmp, "vocab.json"), vocab_path)
    os.replace(os.path.join(tmp, "merges.txt"), merges_path)
    os.rmdir(tmp)
    return vocab_path, merges_path


def clip_tokenizer(model_max_length: int = 77):
    """A transformers CLIP tokenizer (fast, with offsets) with CLIP's real vocabulary, offline."""
    import inspect

    from transformers import CLIPTokenizerFast

    vocab, merges = clip_vocab_files()
    params = inspect.signature(CLIPTokenizerFast.__init__).parameters
    # transformers 5 takes vocab=/merges= (paths or objects), 4.x vocab_file=/merges_file=
    files = {"vocab": vocab, "merges": merges} if "vocab" in params else {"vocab_file": vocab, "merges_file": merges}
    tok = CLIPTokenizerFast(**files, model_max_length=model_max_length, pad_token="<|endoftext|>")
    if tok.convert_tokens_to_ids("dog</w>") in (None, tok.unk_token_id):
        raise RuntimeError("the CLIP vocabulary did not load into the tokenizer")
    return tok


def word_token_indices(tokenizer, prompt: str, tokens, max_length: int | None = None) -> list[list[int]]:
    """Positions in the padded prompt of each requested token.

    `tokens` entries: a word or phrase (every occurrence, case-insensitive,
    all its sub-word pieces), "<eot>" (the end-of-text token), or an int
    position. Raises ValueError naming a word that is not in the prompt.
    """
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    max_length = max_length or getattr(tokenizer, "model_max_length", 77)
    if max_length > 100_000:  # tokenizers without a limit report a huge number
        max_length = 512
    enc = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    out = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (str, int)):
            raise TypeError(f"tokens must be words (str) or positions (int), got {t!r}")
        if isinstance(t, int):
            if not 0 <= t < len(ids):
                raise ValueError(f"token position {t} is outside the {len(ids)}-token prompt")
            out.append([t])
            continue
        if t.lower() in _SPECIAL_EOT:
            eos = tokenizer.eos_token_id
            pos = [i for i, x in enumerate(ids) if x == eos]
            if not pos:
                raise ValueError(f"the prompt has no end-of-text token ({tokenizer.eos_token!r})")
            out.append([pos[0]])
            continue
        spans = [m.span() for m in re.finditer(r"(?<!\w)" + re.escape(t.strip()) + r"(?!\w)", prompt, re.IGNORECASE)]
        hit = sorted({i for i, (a, b) in enumerate(offsets) if b > a and any(a < e and b > s for s, e in spans)})
        if not hit:
            pieces = tokenizer.convert_ids_to_tokens([x for x, (a, b) in zip(ids, offsets) if b > a])
            raise ValueError(f"{t!r} is not a word of the prompt {prompt!r} (its tokens: {pieces})")
        out.append(hit)
    return out
