#!/usr/bin/env python3
"""Makes the texts of the calibration study (results/calibration/): for each kind of text, one
part to score and a different part to calibrate on.

  wikitext  WikiText-2 test (the control): scored from its start; calibrated on the articles that
            start in its last 45K characters
  code      Python source from this machine's standard library: argparse.py and
            configparser.py scored, difflib.py and textwrap.py calibrated on
  german    the German translation of the Debian Reference (Debian package debian-reference-de),
            its prose paragraphs: chapters 1-2 scored, chapter 9 calibrated on
  chat-*    the Debian FAQ (Debian package debian-faq), each question a user turn and the FAQ's
            own answer the assistant's, rendered with each model's chat template as one long
            conversation: the first 70% of the questions scored, the rest calibrated on. The
            pretrained Gemma-3 has no template: its text uses Gemma's turn format

The texts are not committed (the Debian documents are GPL or verbatim-copy licensed); this
script makes them again. It needs jinja2, dpkg-deb and apt-get (for `apt-get download`), and the
two models' GGUF files for their chat templates.

  python3 scripts/experiments/calibration-texts.py --out results/calibration/texts \\
      --wikitext /work/shared/data/wikitext-2-test.txt \\
      --model smollm2=~/.cache/turboquant/models/smollm2-135m.gguf \\
      --model gemma3=~/.cache/turboquant/models/gemma3-270m.gguf
"""

import argparse
import glob
import gzip
import hashlib
import html.parser
import os
import re
import struct
import subprocess
import sys
import tempfile

import jinja2

PACKAGES = ["debian-faq=11.1", "debian-reference-de=2.100"]
CODE_SCORED = ["argparse.py", "configparser.py"]
CODE_CALIBRATION = ["difflib.py", "textwrap.py"]


def write(out, name, text):
    path = os.path.join(out, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    print(f"{name}: {len(text)} characters, sha256 {digest}")


def fetch_debs(work):
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True)
    root = os.path.join(work, "root")
    for deb in glob.glob(os.path.join(work, "*.deb")):
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root


# --- WikiText-2 -------------------------------------------------------------------------------


def wikitext(path, tail_chars=45000):
    text = open(path, encoding="utf-8").read()
    # the calibration part starts at the first article heading (" = Title = ") of the last
    # tail_chars characters
    tail = text[-tail_chars:]
    m = re.search(r"^ = [^=].* = $", tail, re.M)
    if not m:
        sys.exit("no article heading in the end of WikiText-2")
    return tail[m.start():]


# --- code ---------------------------------------------------------------------------------------


def stdlib_dir():
    return os.path.dirname(os.__file__)


def code(files):
    return "\n\n".join(open(os.path.join(stdlib_dir(), f), encoding="utf-8").read() for f in files)


# --- German prose -------------------------------------------------------------------------------


class Paragraphs(html.parser.HTMLParser):
    """The text of the <p> elements outside <pre> and <table>, whitespace collapsed."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.skip = 0
        self.buf = []
        self.out = []

    def handle_starttag(self, tag, attrs):
        if tag == "p":
            self.depth += 1
        elif tag in ("pre", "table"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag == "p" and self.depth:
            self.depth -= 1
            if self.depth == 0:
                text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
                if text:
                    self.out.append(text)
                self.buf = []
        elif tag in ("pre", "table") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.buf.append(data)


def german(root, chapters):
    parts = []
    for ch in chapters:
        p = Paragraphs()
        p.feed(open(os.path.join(root, f"usr/share/debian-reference/{ch}.de.html"), encoding="utf-8").read())
        parts.append("\n\n".join(p.out))
    return "\n\n".join(parts)


# --- chat ---------------------------------------------------------------------------------------


def faq_pairs(root):
    """(question, answer) from the FAQ's text version: a question is a numbered heading at the
    left margin ("2.1. What is ...?", possibly over several lines), its answer the indented
    paragraphs up to the next heading, each paragraph's lines joined."""
    lines = gzip.open(os.path.join(root, "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"), "rt", encoding="utf-8").read().splitlines()
    heading = re.compile(r"^\d+\.\d+(\.\d+)?\.\s+\S")
    pairs = []
    i = 0
    while i < len(lines):
        if not heading.match(lines[i]):
            i += 1
            continue
        q = [lines[i]]
        i += 1
        while i < len(lines) and lines[i].strip() and not lines[i].startswith(" "):
            q.append(lines[i])
            i += 1
        question = re.sub(r"^[\d.]+\s+", "", " ".join(s.strip() for s in q))
        paras, cur = [], []
        while i < len(lines) and not heading.match(lines[i]) and not re.match(r"^Chapter \d+\.", lines[i]):
            s = lines[i].strip()
            if not s:
                if cur:
                    paras.append(cur)
                cur = []
            elif s.startswith("* ") and cur:
                paras.append(cur)
                cur = [s]
            else:
                cur.append(s)
            i += 1
        if cur:
            paras.append(cur)
        answer = "\n\n".join(" ".join(p) for p in paras).strip()
        if answer:
            pairs.append((question, answer))
    return pairs


def gguf_chat_template(path):
    """tokenizer.chat_template and the special tokens' texts from a GGUF file's metadata."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)
    if data[:4] != b"GGUF":
        sys.exit(f"{path} is not a GGUF file")
    off = 8
    _, n_kv = struct.unpack_from("<QQ", data, off)
    off += 16
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(off):
        (n,) = struct.unpack_from("<Q", data, off)
        return data[off + 8:off + 8 + n].decode("utf-8"), off + 8 + n

    def value(t, off):
        if t == 8:
            return string(off)
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, off)
            off += 12
            out = []
            for _ in range(n):
                v, off = value(et, off)
                out.append(v)
            return out, off
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[t]
        return struct.unpack_from(fmt, data, off)[0], off + sizes[t]

    meta = {}
    for _ in range(n_kv):
        key, off = string(off)
        (t,) = struct.unpack_from("<I", data, off)
        off += 4
        v, off = value(t, off)
        meta[key] = v
    tokens = meta["tokenizer.ggml.tokens"]
    special = {name: tokens[meta[f"tokenizer.ggml.{name}_token_id"]] for name in ("bos", "eos")
               if f"tokenizer.ggml.{name}_token_id" in meta}
    # where the tokenizer adds BOS itself, the text is written without it
    special["add_bos"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    template = meta.get("tokenizer.chat_template")
    if template is None and meta.get("general.architecture") == "gemma3" and "<start_of_turn>" in tokens:
        # the pretrained Gemma-3 carries no template; its tokenizer has the turn markers of the
        # instruction-tuned models' format, which is this
        print(f"{path}: no chat template; using the Gemma turn format")
        template = GEMMA_TURNS
    if template is None:
        sys.exit(f"{path} has no chat template")
    return template, special


# Gemma's turn format: "<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n..."
GEMMA_TURNS = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
)


def render_chat(template, special, pairs):
    def raise_exception(msg):
        raise RuntimeError(msg)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    messages = []
    for q, a in pairs:
        messages.append({"role": "user", "content": q})
        messages.append({"role": "assistant", "content": a})
    text = env.from_string(template).render(
        messages=messages, add_generation_prompt=False,
        bos_token=special.get("bos", ""), eos_token=special.get("eos", ""))
    # where the tokenizer adds BOS itself (perplexity and the calibration tokenize with it)
    bos = special.get("bos", "")
    if special["add_bos"] and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wikitext", required=True)
    ap.add_argument("--model", action="append", default=[], help="NAME=GGUF, for chat-NAME-*.txt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    write(args.out, "wikitext-calibration.txt", wikitext(args.wikitext))
    write(args.out, "code-scored.txt", code(CODE_SCORED))
    write(args.out, "code-calibration.txt", code(CODE_CALIBRATION))
    with tempfile.TemporaryDirectory() as work:
        root = fetch_debs(work)
        write(args.out, "german-scored.txt", german(root, ["ch01", "ch02"]))
        write(args.out, "german-calibration.txt", german(root, ["ch09"]))
        pairs = faq_pairs(root)
        cut = int(len(pairs) * 0.7)
        print(f"Debian FAQ: {len(pairs)} questions, {cut} scored")
        for spec in args.model:
            name, path = spec.split("=", 1)
            template, special = gguf_chat_template(os.path.expanduser(path))
            write(args.out, f"chat-{name}-scored.txt", render_chat(template, special, pairs[:cut]))
            write(args.out, f"chat-{name}-calibration.txt", render_chat(template, special, pairs[cut:]))


if __name__ == "__main__":
    main()
