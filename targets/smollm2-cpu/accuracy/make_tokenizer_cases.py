#!/usr/bin/env python3
"""Record llama.cpp's tokenizer and chat-template output on the target's GGUF.

Writes `tokenizer_cases.jsonl` (beside this script), which the server template's test
`tests/tokenizer_llamacpp.rs` replays against our tokenizer and chat template:

* one `vocab` record: BOS/EOS ids, whether BOS is added, and llama.cpp's
  end-of-generation ids (`llama_vocab_is_eog`);
* `encode` records: a text, whether special tokens are parsed, llama.cpp's token ids
  (`llama_tokenize` with add_special = true, so BOS comes as the GGUF says) and
  llama.cpp's detokenization of those ids with special tokens rendered;
* `chat` records: a conversation and the prompt llama-cpp-python's
  `Jinja2ChatFormatter` renders from the GGUF's `tokenizer.chat_template` (Python's
  jinja2, the reference implementation of the template language, configured as
  transformers configures it).

Usage: python3 make_tokenizer_cases.py --model SmolLM2-135M-Instruct.Q4_1.gguf
Needs: pip install llama-cpp-python (tested with 0.3.36).
"""

import argparse
import hashlib
import json
import pathlib

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

# Texts chosen to exercise every branch of the pre-tokenizer regex, byte-level BPE on
# multibyte UTF-8, and special-token splitting.
TEXTS = [
    # ASCII prose and casing
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "hello",
    " hello",
    "  hello",
    "HELLO World MiXeD CaSe",
    "Once upon a time, in a land far, far away, there lived a small robot.",
    # contractions
    "I'm sure it's fine, they're here, we've seen it, you'll see, he'd go.",
    "DON'T SHOUT, it's 'quoted' text",
    "rock 'n' roll",
    # unicode accents and scripts
    "café naïve façade coöperate résumé",
    "Ünïcödé ñ ß Ø å æ œ",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    # CJK
    "你好，世界！",
    "日本語のテキストです。カタカナとひらがな。",
    "한국어 텍스트입니다",
    "混合 mixed 文本 text 123",
    # emoji: single, skin tones, ZWJ sequences, flags, keycaps
    "🦀",
    "I love 🦀 and 🐍!",
    "👍🏽 thumbs",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 flag",
    "🇫🇷🇯🇵🇺🇸",
    "1️⃣ keycap",
    "emoji at end 😀",
    # code, indentation, tabs
    "def f(x):\n    return x * 2\n",
    "fn main() {\n\tprintln!(\"hi\");\n}\n",
    "if (a && b) { c = d >> 2; } // comment",
    "\t\tdouble tab\n\t\t\ttriple",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<html><body class=\"x\">text</body></html>",
    # whitespace runs, trailing spaces, newline runs
    "a  b   c    d",
    "trailing spaces   ",
    "   leading spaces",
    "line1\nline2\n\nline3\n\n\n\nline4",
    "\n\n\n",
    "   ",
    " ",
    "mixed \t \n whitespace\r\n",
    "word\u00a0nbsp\u3000ideographic space",
    # digits and numbers
    "1234567890",
    "3.14159265358979",
    "The year 2024 had 366 days; 1,000,000 people.",
    "Phone: +1 (555) 123-4567",
    "０１２３ full-width digits ٣٤٥ arabic-indic",
    "v1.2.3-rc.4",
    # punctuation
    "Wait... what?! (yes) [no] {maybe} <tag>",
    "!!!???...,,,;;;:::",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "€100 £50 ¥1000 $5.99 ©®™",
    # special tokens inline
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|>",
    "almost special <|im_start and <im_end|>",
    "<repo_name>vibeserve<file_sep>src/main.rs",
    # empty
    "",
]

# These are also tokenized with special-token parsing off: the markers become text.
PLAIN_TEXTS = [
    "<|im_start|>user\nhi<|im_end|>",
    "text<|endoftext|>more text",
    "<repo_name>vibeserve<file_sep>src/main.rs",
    "Hello world",
]

CONVERSATIONS = [
    ([{"role": "user", "content": "Hi!"}], True),
    ([{"role": "user", "content": "Hi!"}], False),
    (
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
        True,
    ),
    (
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And times 3?"},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another, in 日本語 🦀"},
        ],
        True,
    ),
    ([{"role": "user", "content": "  spaces and\nnewlines\n\n  "}], True),
]

# A template in the style of larger HF models, to exercise what SmolLM2's own template
# does not: trim_blocks/lstrip_blocks, namespace(), loop variables, Python string
# methods (pycompat) and raise_exception. Rendered on every conversation above.
RICH_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(system='') %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {% set ns.system = message['content'].strip() %}
    {% endif %}
{% endfor %}
{% if ns.system %}[SYS] {{ ns.system.upper() }} [/SYS]
{% endif %}
{% for message in messages if message['role'] != 'system' %}
    {% if message['role'] not in ['user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% if message['role'] == 'user' %}
[{{ loop.index }}] USER: {{ message['content'].strip() }}
    {% elif message['content'].startswith('4') %}
ASSISTANT (number): {{ message['content'] | trim }}{{ eos_token }}
    {% else %}
ASSISTANT: {{ message['content'].replace('.', '!') }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
ASSISTANT:
{%- endif %}"""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the target's GGUF file")
    ap.add_argument(
        "--out",
        default=str(pathlib.Path(__file__).with_name("tokenizer_cases.jsonl")),
    )
    args = ap.parse_args()

    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llm.n_vocab()
    bos, eos = llm.token_bos(), llm.token_eos()
    records = [
        {
            "kind": "vocab",
            "model_sha256": sha256(args.model),
            "llama_cpp_python": llama_cpp.__version__,
            "n_vocab": n_vocab,
            "bos_id": bos,
            "eos_id": eos,
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "eog_ids": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        }
    ]
    cases = [(t, True) for t in TEXTS] + [(t, False) for t in PLAIN_TEXTS]
    for text, special in cases:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)
        detok = llm.detokenize(ids, special=True).decode("utf-8")
        records.append(
            {
                "kind": "encode",
                "text": text,
                "parse_special": special,
                "ids": ids,
                "detokenized": detok,
            }
        )

    gguf_template = llm.metadata["tokenizer.chat_template"]
    tokens = [llm._model.token_get_text(i) for i in (bos, eos)]
    for template in (None, RICH_TEMPLATE):
        for messages, add_generation_prompt in CONVERSATIONS:
            formatter = Jinja2ChatFormatter(
                template=template or gguf_template,
                bos_token=tokens[0],
                eos_token=tokens[1],
                add_generation_prompt=add_generation_prompt,
            )
            prompt = formatter(messages=messages).prompt
            records.append(
                {
                    "kind": "chat",
                    # null: the GGUF's own tokenizer.chat_template
                    "template": template,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "prompt": prompt,
                }
            )

    with open(args.out, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
