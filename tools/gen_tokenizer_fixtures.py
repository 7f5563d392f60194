#!/usr/bin/env python3
"""Generate the tokenizer fixtures (and the small data assets) that gclip's tests compare against.

Run by hand with the reference virtual environment (torch, open_clip_torch, transformers, ftfy):

    /work/venv-ref/py/bin/python tools/gen_tokenizer_fixtures.py all

and, for the slow/fast comparison, optionally with a transformers 4.x environment that still has
the slow Python `CLIPTokenizer`:

    /path/to/venv-tf4/bin/python tools/gen_tokenizer_fixtures.py slow

Sub-commands:

- `assets`: writes `crates/gclip/assets/html5_entities.tsv`, the HTML5 named character references
  as Python's `html.entities.html5` knows them (data used by the Rust `html_unescape`).
- `hf`: writes `tests/fixtures/tokenizer/hf/` (vocab.json, merges.txt, tokenizer_config.json) built
  from open_clip's `bpe_simple_vocab_16e6.txt.gz`, loads it with transformers to check it works,
  and saves the `tokenizer.json` that the fast tokenizer produces into
  `tests/fixtures/tokenizer/hf_json/`.
- `corpus`: assembles the corpus and writes `tests/fixtures/tokenizer/corpus.jsonl.gz`, one JSON
  object a line: `text`, `fixed` (ftfy.fix_text), `clean` (open_clip's cleaning), `open_clip`
  (open_clip.tokenize ids, padding trimmed), `hf` (CLIPTokenizerFast ids with
  padding="max_length", truncation=True, max_length=77, padding trimmed).
- `sweep`: writes `tests/fixtures/tokenizer/unicode_sweep.json.gz`: every assigned code point up
  to U+2FFFF in chunks of 64, with the untruncated ids of both conventions.
- `slow`: (transformers 4.x only) adds `hf_slow` ids from the slow `CLIPTokenizer` to a separate
  file `tests/fixtures/tokenizer/slow.jsonl.gz` and prints where slow and fast differ.
- `all`: assets, hf, corpus, sweep.

Ids are stored without their padding (the tests pad them back); the Rust tests know the pad ids.
"""

import gzip
import html
import html.entities
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
ASSETS = os.path.join(ROOT, "crates", "gclip", "assets")
BPE_GZ = os.path.join(ASSETS, "bpe_simple_vocab_16e6.txt.gz")
CONTEXT = 77


def write_assets():
    path = os.path.join(ASSETS, "html5_entities.tsv")
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for name in sorted(html.entities.html5):
            value = html.entities.html5[name]
            f.write(name + "\t" + " ".join(f"{ord(c):X}" for c in value) + "\n")
    print("wrote", path)


def bytes_to_unicode():
    # The GPT-2/CLIP byte-level alphabet: printable Latin-1 bytes map to themselves, the other
    # bytes to code points from U+0100 upwards, in byte order.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    order = keep + [b for b in range(256) if b not in keep]
    return [table[b] for b in order]


def write_hf_dir():
    out = os.path.join(FIX, "hf")
    os.makedirs(out, exist_ok=True)
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = bytes_to_unicode()
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(m + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w", newline="\n") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    from transformers import CLIPTokenizerFast

    tok = CLIPTokenizerFast.from_pretrained(out)
    assert tok.pad_token_id == 49407 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    jdir = os.path.join(FIX, "hf_json")
    os.makedirs(jdir, exist_ok=True)
    with open(os.path.join(jdir, "tokenizer.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(tok.backend_tokenizer.to_str())
    print("wrote", out, "and", jdir)


# ---------------------------------------------------------------------------------------------
# Corpus


def mojibake(s, enc="latin-1"):
    """UTF-8 bytes of s decoded as a single-byte encoding (what ftfy repairs)."""
    b = s.encode("utf-8")
    if enc == "windows-1252":
        # Python's cp1252 refuses 5 bytes; browsers (and ftfy's "sloppy" codec) pass them through.
        return "".join(
            bytes([x]).decode("cp1252") if x not in (0x81, 0x8D, 0x8F, 0x90, 0x9D) else chr(x) for x in b
        )
    return b.decode(enc)


def build_corpus():
    rng = random.Random(1234)
    out = []

    def add(s):
        if "\ud800" <= s[:1] <= "\udfff" or any("\ud800" <= c <= "\udfff" for c in s):
            return  # not representable as Rust &str
        out.append(s)

    # --- captions and product titles -------------------------------------------------------
    subjects = [
        "a photo of a cat", "a dog running on the beach", "two people riding bikes in the rain",
        "a bowl of ramen with egg", "the Eiffel Tower at night", "a red sports car", "a close-up of a bee on a flower",
        "an old man reading a newspaper", "children playing football", "a snowy mountain landscape",
        "a plate of sushi", "a kitten sleeping on a sofa", "a bridge over a river", "a vintage typewriter",
        "a blurry photo of a bird", "a painting of a sunflower field", "a satellite image of a city",
        "a diagram of the human heart", "a pixel art dragon", "an X-ray of a hand",
    ]
    templates = [
        "{}", "a photo of {}.", "A PHOTO OF {}!", "itap of {}", "a bad photo of the {}.", "a sculpture of a {}.",
        "a rendering of the {}.", "graffiti of a {}.", "a tattoo of the {}.", "the embroidered {}.",
        "there's a {} here", "it's a {}, isn't it?", "{} -- we'll see", "they've got {}", "I'm {}", "you'd {}",
        "{} (2019)", "{}... and more", "#{} #photo", "@user: {}", "  {}  ",
    ]
    for s in subjects:
        for t in rng.sample(templates, 8):
            add(t.format(s))
    brands = ["Samsung", "Apple", "Nike", "IKEA", "Sony", "Bosch", "LEGO", "Philips", "Adidas", "Canon"]
    products = [
        "Galaxy S23 Ultra 256GB Phantom Black", "iPhone 15 Pro Max (Natural Titanium)", "Air Max 90 Men's Shoes",
        "KALLAX Shelf unit, white, 77x147 cm", "WH-1000XM5 Wireless Noise-Cancelling Headphones",
        "Serie 6 Dishwasher 60cm SMS6ZCI49E", "Star Wars Millennium Falcon 75192 - 7541 pcs",
        "Hue White & Color Ambiance E27 2-pack", "Ultraboost 22 Running Shoes Size 10.5 US",
        "EOS R6 Mark II Body + RF 24-105mm f/4L", "USB-C to Lightning Cable 2m/6.6ft", "4K UHD 55\" Smart TV",
        "Stainless Steel Water Bottle 750ml - BPA free", "Men's Slim-Fit Cotton T-Shirt, Navy, XL",
        "Organic Green Tea 100 bags | 200g", "Gaming Mouse 16000 DPI RGB w/ 8 buttons",
    ]
    for b in brands:
        for p in rng.sample(products, 6):
            add(f"{b} {p}")
    for i in range(60):
        n = rng.randint(1, 99999)
        add(f"Item #{n} - {rng.choice(products)} - ${n / 100:.2f} ({rng.randint(1, 50)}% off)")

    # --- numbers, contractions, punctuation -------------------------------------------------
    for s in [
        "1234567890", "3.14159", "1,000,000", "2024-01-15", "12:30pm", "+1 (555) 010-9999", "v2.0.1-beta",
        "50%", "$5", "€10,99", "¥1000", "1/2 cup", "½ cup", "x²+y²=z²", "Ⅻ", "٣٤٥", "१२३", "①②③", "0x1F600",
        "don't", "DON'T", "it's", "It'S", "we're", "they've", "I'm", "he'll", "she'd", "'s", "'S", "s'", "''",
        "rock 'n' roll", "'tis", "o'clock", "y'all'd've", "isn’t", "don’t", "it‘s", "‘quoted’", "“double”",
        "„German“", "«French»", "‹single›", "can ʼt", "we‛re", "‟weird”", "'ſ'", "'ſt", "'ſ", "ſ",
        "!!!", "???", "...", "—", "–", "--", "-_-", "(╯°□°)╯︵ ┻━┻", "¯\\_(ツ)_/¯", ":-)", ";)", "<3", "^_^",
        "a.b.c", "e.g.", "i.e.,", "U.S.A.", "C++", "C#", "F#", "node.js", "foo_bar_baz", "CamelCaseWord",
        "snake_case", "kebab-case", "path/to/file.txt", "https://example.com/a?b=c&d=e", "user@example.com",
        "#hashtag", "@mention", "~tilde~", "`code`", "[brackets]", "{braces}", "<angle>", "a|b", "back\\slash",
        "tab\tseparated\tvalues", "line1\nline2", "trailing newline\n", "\n\nleading newlines",
    ]:
        add(s)

    # --- multilingual ------------------------------------------------------------------------
    multi = [
        "Ein Foto von einer Katze", "Straße", "STRASSE", "Größe", "ÄÖÜ äöü ß ẞ", "une photo d'un chat", "À bientôt",
        "Ça va? Où est l'hôtel?", "una foto de un perro", "¿Qué tal? ¡Hola!", "Niño año", "uma foto de um gato",
        "Ação, coração, não", "Ελληνικά γράμματα", "ΟΔΟΣ", "ὈΔΥΣΣΕΎΣ", "Σ", "σς", "ΣΑΣ ΣΑΣ", "Русский текст",
        "ФОТО КОШКИ", "Україна", "Ёлка", "Български", "Српски ћирилица", "日本語のテキスト", "猫の写真",
        "カタカナ", "ｶﾀｶﾅ", "ひらがな", "中文文本", "一只猫的照片", "繁體中文", "한국어 텍스트", "고양이 사진",
        "العربية", "صورة قطة", "مرحبا بالعالم", "עברית", "תמונה של חתול", "हिन्दी", "बिल्ली की तस्वीर",
        "বাংলা", "தமிழ்", "ไทย ภาษา", "Tiếng Việt", "Türkçe İstanbul ıi", "İ", "ı", "Polski: zażółć gęślą jaźń",
        "Čeština: příliš žluťoučký kůň", "Magyar: árvíztűrő tükörfúrógép", "Română: știință", "Íslenska: þ ð",
        "Ελληνικά: Σίσυφος", "ქართული", "Հայերեն", "ᐃᓄᒃᑎᑐᑦ", "ꦗꦮ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐛𝐨𝐥𝐝", "ℌ𝔢𝔩𝔩𝔬",
        "e\u0301", "é", "n\u0303", "A\u030a", "Å", "Å", "\u1e9b\u0323", "한\u1100\u1161", "\u1112\u1161\u11ab",
        "ﬁne ﬂour ﬀ ﬃ ﬄ ﬅ ﬆ", "Ĳssel ĳs", "ǅ ǆ Ǆ ǈ ǉ Ǉ ǋ ǌ Ǌ ǲ ǳ Ǳ", "ŉ", "ＬＯＵＤ　ＮＯＩＳＥＳ", "Ｕﾀｰﾝ",
        "ﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ", "１２３ＡＢＣ", "ｈｔｔｐｓ：／／", "Ⓐⓑⓒ", "㎏㎡", "™©®", "µ", "K Å Ω",
        "Kelvin K", "ǰ", "ΐ", "ﬓ", "ß".upper(), "ǅungla",
    ]
    for s in multi:
        add(s)
    width_chars = "".join(chr(c) for c in range(0xFF01, 0xFFEF))
    for i in range(0, len(width_chars), 40):
        add(width_chars[i : i + 40])

    # --- emoji ----------------------------------------------------------------------------------
    for s in [
        "😀", "I love it 😍😍😍", "🐱🐶", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴󠁧󠁢󠁷󠁬󠁳󠁿", "🇯🇵🇺🇸", "❤️", "☕",
        "1️⃣", "🧑🏿‍🚀", "🙈🙉🙊", "emoji at the end 🎉", "🎉 emoji at the start", "a🍕b", "🤷‍♂️", "⚠️ warning",
        "✔ No problems", "★★★★☆", "→ ← ↑ ↓", "♥♦♣♠", "∑∏√∞", "\u200d", "a\u200db", "a\u200cb", "\ufe0f",
    ]:
        add(s)

    # --- HTML entities ----------------------------------------------------------------------
    for s in [
        "&amp;", "&lt;tag&gt;", "Tom &amp; Jerry", "Tom &amp;amp; Jerry", "&amp;amp;amp;", "&quot;quoted&quot;",
        "&#39;single&#39;", "&#x27;hex&#x27;", "&#X27;", "&#8217;", "&#x2019;s", "&#128512;", "&#x1F600;",
        "&nbsp;non&nbsp;breaking", "caf&eacute;", "CAF&EACUTE;", "P&EACUTE;REZ", "BUNDESSTRA&SZLIG;E",
        "&ntilde; &Ntilde; &NTILDE; &nTILDE;", "&Jscr;ohn &HilbertSpace;ancock", "&checkmark;", "&hellip;",
        "this&not that", "&notit;", "&copy 2020", "&copy2020", "AT&T", "AT&amp;T", "Q&A", "R&D dept",
        "&", "&&", "&;", "&#;", "&#x;", "&#12a;", "&#0;", "&#1;", "&#13;", "&#128;", "&#129;", "&#150;",
        "&#59;", "&#x3b;", "&#xD800;", "&#1114112;", "&#99999999999;", "&#65;&#66;&#67;", "&#0065;",
        "&ampx", "&amp", "&lt", "&gt;", "&LT;", "&AMP;", "&AMP", "&Amp;", "&frac12;", "&FRAC12;", "&sup2;",
        "&SUP2;", "&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b> &amp; stuff", "a < b &amp; c", "&lt;3",
        "&verylongentitynamethatdoesnotexist;", "&abcdefghijklmnopqrstuvwxyz;", "&a;", "&aa;", "&zwj;",
        "&thinsp;", "&ensp;&emsp;", "&shy;", "&lrm;", "&#x200B;", "&NotNestedGreaterGreater;",
        "&amp;lt;", "&amp;#39;", "&amp;amp;lt;", "&#38;amp;", "&#38;#38;", "x&#x26;y", "&#x26;lt;",
        "Fish &amp; Chips &#8211; &pound;5", "line1&#10;line2", "&#9;tab", "&#xA0;",
    ]:
        add(s)
    names = sorted(k for k in html.entities.html5 if k.endswith(";"))
    for i in range(0, len(names), 60):
        chunk = names[i : i + 60]
        add(" ".join("&" + n for n in chunk))
        add(" ".join("&" + n.upper() for n in chunk))
    legacy = sorted(k for k in html.entities.html5 if not k.endswith(";"))
    add(" ".join("&" + n + "x" for n in legacy))

    # --- mojibake -----------------------------------------------------------------------------
    clean_samples = [
        "café", "naïve résumé", "schön", "Straße", "piñata", "São Paulo", "Zürich", "voilà le travail",
        "à la mode", "“curly quotes”", "it’s", "— em dash", "…", "€5", "™", "✔ No problems", "ツ",
        "日本語", "Москва", "Ελλάδα", "😀 emoji", "Ærøskøbing", "Łódź", "İstanbul", "Ñandú", "Ça",
        "fàcil", "às vezes", "àquele", "à quel point", "naïveté", "façade", "jalapeño", "crème brûlée",
        "coöperate", "Ünïcödé", "“It’s ‘nested’”", "¡Olé!", "€ £ ¥", "–", "•", "±½", "Ð", "Ø", "محمد",
    ]
    for s in clean_samples:
        add(mojibake(s))
        add(mojibake(s, "windows-1252"))
        add(mojibake(mojibake(s, "windows-1252"), "windows-1252"))
        add(mojibake(mojibake(s)))
        add("The text: " + mojibake(s, "windows-1252") + " (broken)")
        try:
            add(s.encode("utf-8").decode("cp1251"))
        except UnicodeDecodeError:
            pass
        try:
            add(s.encode("utf-8").decode("mac_roman"))
        except UnicodeDecodeError:
            pass
    for s in [
        "sÃ³", "Ã³", "voilÃ le travail", "Ã la mode", "fÃ cil", "Ã s vezes", "Ã quele", "Ã  la", "Ã ", "Ã",
        "â€œ like this â€\ufffd", "â€œmixedâ€ and “fine”", "The Mona Lisa doesnâ€™t have eyebrows.",
        "Ã©tÃ© Ã©tÃ©", "Ã¢â‚¬Å“", "Ã\xa0 bientÃ´t", "&macr;\\_(ã\x83\x84)_/&macr;", "âœ” No problems",
        "ÐœÐ¾ÑÐºÐ²Ð°", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "ã\x81\x82", "æ—¥æœ¬", "í•œêµ\xad", "ðŸ˜€", "ðŸ‘", "Ã\x80",
        "This is â€œtextâ€ in windows-1252 mojibake", "price: Â£5", "Â£", "Â ", "Â", "a Â b", "x Â. y",
        "Ã¨Ã©Ãª", "Ãƒâ€šÃ‚Â", "\x80\x81\x8d", "\x93quoted\x94", "\x85", "a\x96b", "\x9d", "caf\xe9",
        "ÃƒÂ©", "Ã¼ber", "Ã\u009c", "Ã©", "Ã©\u00a0", "\xed\xa0\xbd\xed\xb8\x80", "\xc0\x80",
        "Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©", "×©×œ×•×", "à¤¹à¤¿à¤¨à¥\x8dà¤¦à¥€", "à²", "×²", "â€¢ bullet", "Ã¶Ã¤Ã¼",
        "Ð²Ð°ÑˆÐµ", "вЂњquoteвЂќ", "Р В Р’В°", "ГўВЂВњx", "Î±Î²Î³", "Ï€", "Ä€", "√©", "‚Äú", "≈°",
        "ÃƒÆ’Ã‚Â©", "ÃƒÂ¡", "dÃ©jÃ  vu", "Ã¡rbol", "naÃ¯ve", "Mot\xf6rhead", "Ã\x9f", "Ã\u0178",
        "Â¿QuÃ© tal?", "Ã‰", "Â©2020", "Â®", "Ã±", "Ã\u2018", "â€™", "â€“", "â€”", "â€¦", "â€", "â€?",
        "Ã?", "Ã\ufffd", "\ufffd", "â\ufffd\ufffd", "a\x1ab", "Ã\x1a", "mixed: cafÃ© and café",
        "ĂŠ", "Å\u009f", "Ä\u009f", "Å\x9f", "Ã\x89", "ÃƒÂ", "Ã¢â€žÂ¢", "Ã¢â‚¬â€œ", "Ã©\nÃ©", "Ã©\r\nx",
        "Ã¢Â€Â™", "Ã¯Â»Â¿", "ï»¿BOM", "\ufeffBOM", "zero\u200bwidth", "Ã\u02dc", "Ã˜", "Ã—", "Ã·",
        "â€\u009d", "â€\x9d", "Ã¢â‚¬Å¾", "Â·", "Â» text", "× ²", "×²", "à²¹", "ā€", "β€™", "β€",
    ]:
        add(s)

    # --- control characters, terminal escapes, line breaks --------------------------------
    for s in [
        "\x00null", "bell\x07", "back\x08space", "vertical\x0btab", "form\x0cfeed", "carriage\rreturn",
        "crlf\r\nline", "cr\r\rcr", "\r\n\r\n", "unit\x1fsep", "\x1c\x1d\x1e\x1f", "del\x7f", "esc\x1b",
        "\x1b[36;44mI'm blue, da ba dee\x1b[0m", "\x1b[1mbold\x1b[22m", "\x1b[31mred", "\x1b[", "\x1b[999",
        "\x1b[1;2;3;4m", "\x1b[\u0661m", "\x1b(B", "\x1b]0;title\x07", "line\u2028sep", "para\u2029sep",
        "next\x85line", "\u206aarabic\u206f", "\ufff9ann\ufffa\ufffb", "obj\ufffc", "\ufeffbom", "bom\ufeffmid",
        "\u200e\u200f lrm rlm", "\u202aembed\u202c", "\U0001d173music", "soft\xadhyphen", "nb\xa0sp",
        "ogham\u1680space", "en\u2002space", "thin\u2009space", "hair\u200aspace", "narrow\u202fnbsp",
        "math\u205fspace", "ideo\u3000space", "mongolian\u180evowel", "zw\u200bsp", "\u2060word joiner",
        "\x85\x85", "a\x1cb\x1dc\x1ed\x1ff", "tab\t\ttabs", "  spaces   everywhere  ", "\t\n\r ",
        "\x0b\x0c", "a \u00a0 b", "a\u2003\u2003b", "\x1b[0m", "ab\x1b[Kcd", "\x1b[2J\x1b[H",
    ]:
        add(s)

    # --- empty and whitespace-only --------------------------------------------------------------
    for s in ["", " ", "   ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\u2028", "\x85", " \t \n ", "\x00", "\ufeff"]:
        add(s)

    # --- special tokens of both conventions -------------------------------------------------
    for s in [
        "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<Start_Of_Text>a", "a<end_of_text>b",
        "<start_of_text>hello<end_of_text>", "<start_of_text><end_of_text>", "<|startoftext|>",
        "<|endoftext|>", "<|startoftext|>hi<|endoftext|>", "<|STARTOFTEXT|>", "<|EndOfText|>", "x<|endoftext|>y",
        "<|endoftext|>!", "!<|startoftext|>", "<|startoftext|> spaced <|endoftext|>", "<|endoftext|><|endoftext|>",
        "<|ENDOFTEXT|>!", "x<|STARTOFTEXT|>y", "<| startoftext |>", "<|startoftext", "startoftext|>",
        "<start_of_text", "<ſtart_of_text>", "<|ſtartoftext|>", "<end_of_text>" * 3, "<|endoftext|>" * 3,
        "<start_of_text> <|startoftext|>", "a photo of a <end_of_text> cat", "&lt;start_of_text&gt;",
        "&lt;|endoftext|&gt;", "<|endoftext|\u200b>", "<|endoftext|>\u0301", "\u00a0<|endoftext|>\u00a0",
    ]:
        add(s)

    # --- long texts -------------------------------------------------------------------------------
    words = (
        "the quick brown fox jumps over the lazy dog while a photograph of an astronaut riding a horse "
        "appears on the screen next to supercalifragilisticexpialidocious antidisestablishmentarianism "
        "pneumonoultramicroscopicsilicovolcanoconiosis 12345 67890 !!! ??? café naïve 日本語 😀 Ελληνικά"
    ).split()
    for n in [60, 75, 76, 77, 78, 80, 100, 200, 500]:
        add(" ".join(rng.choice(words) for _ in range(n)))
    add("a " * 74 + "end")
    add("a " * 75 + "end")
    add("a " * 76)
    add("hello " * 1000)
    add("x" * 5000)
    add("😀" * 100)
    add("日本語" * 100)
    add("1" * 200)
    add("&amp;" * 100)
    add("Ã©" * 100)
    add("word " * 40 + "\n" + "other " * 40)

    # --- case-folding and Unicode-table corners ---------------------------------------------
    for s in [
        "a\u0345b", "\u0345", "ΣΑΣ.", "ΑΣ ΑΣ", "ὈΔΥΣΣΕΎΣ!", "σ", "Σ1", "aΣ", "İİ", "ẞ", "ǅ", "Ǆ", "ﬀ", "ŉ",
        "K", "Å", "Ω", "ſ", "ﬅ", "\u1e9e", "\u0130\u0307", "\u03a3\u0301", "A\u0301\u0302", "\u1100\u1161\u11a8",
    ]:
        add(s)
    # Random strings of assigned code points (Unicode as Python knows it), to exercise the letter,
    # digit, whitespace, case and normalisation tables of both sides.
    import unicodedata

    assigned = [
        c
        for c in range(0x20, 0x30000)
        if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co") and not (0xD800 <= c <= 0xDFFF)
    ]
    for _ in range(120):
        add("".join(chr(rng.choice(assigned)) for _ in range(rng.randint(1, 12))))

    # --- random mixtures (keep the corpus broad) --------------------------------------------
    pieces = [
        "cat", "DOG", "Ünïcödé", "日本", "😀", "&amp;", "&lt;", "Ã©", "’", "“", "ﬁ", "ＡＢ", "\t", "\n", "\r\n",
        "  ", "123", "4.5", "'s", "'LL", "<|endoftext|>", "<end_of_text>", "é", "e\u0301", "ΣΑΣ", "Привет",
        "\x1b[31m", "\x00", "\u200b", "\u2028", "\x85", "#tag", "@you", "...", "—", "ß", "İ", "ǅ", "ｶ", "€",
        "Â£", "â€œ", "\xa0", "&#x41;", "&nbsp;", "<b>", "a.b", "x-y", "(", ")", "ſ", "K",
    ]
    while len(out) < 1500:
        k = rng.randint(1, 12)
        add("".join(rng.choice(pieces) + rng.choice(["", " ", "", "-"]) for _ in range(k)))
    return out


def trim_zeros(ids):
    """open_clip pads with 0; its sequences always end with EOT (49407), so trailing zeros are padding."""
    ids = list(ids)
    while ids and ids[-1] == 0:
        ids.pop()
    return ids


def unpadded(enc):
    """transformers ids without padding, cut where the attention mask ends (its pad id is EOT)."""
    return [ids[: sum(mask)] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]


def write_corpus():
    import ftfy
    import open_clip
    from open_clip.tokenizer import _clean_lower
    from transformers import CLIPTokenizerFast

    corpus = build_corpus()
    hf = CLIPTokenizerFast.from_pretrained(os.path.join(FIX, "hf"))
    oc_ids = open_clip.tokenize(corpus, context_length=CONTEXT).tolist()
    hf_enc = hf(corpus, padding="max_length", truncation=True, max_length=CONTEXT)
    assert all(len(ids) == CONTEXT for ids in hf_enc["input_ids"])
    assert all(ids[n:] == [49407] * (CONTEXT - n) for ids, n in zip(hf_enc["input_ids"], map(sum, hf_enc["attention_mask"])))
    hf_ids = unpadded(hf_enc)
    path = os.path.join(FIX, "corpus.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8", newline="\n") as f:
        for text, a, b in zip(corpus, oc_ids, hf_ids):
            assert len(a) == CONTEXT
            rec = {
                "text": text,
                "fixed": ftfy.fix_text(text),
                "clean": _clean_lower(text),
                "open_clip": trim_zeros(a),
                "hf": b,
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print("wrote", path, len(corpus), "strings")


def write_sweep():
    """Every code point assigned in Python's Unicode tables (U+0020..U+2FFFF), in chunks of 64
    consecutive characters, with the full (untruncated) ids of both conventions."""
    import unicodedata

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizerFast

    simple = SimpleTokenizer()
    hf = CLIPTokenizerFast.from_pretrained(os.path.join(FIX, "hf"))
    assigned = [c for c in range(0x20, 0x30000) if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")]
    chunks = ["".join(chr(c) for c in assigned[i : i + 64]) for i in range(0, len(assigned), 64)]
    data = {
        "unicode_version": unicodedata.unidata_version,
        "chunks": chunks,
        "open_clip": [simple.encode(s) for s in chunks],
        "hf": hf(chunks, add_special_tokens=False)["input_ids"],
    }
    path = os.path.join(FIX, "unicode_sweep.json.gz")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    print("wrote", path, len(chunks), "chunks of", len(assigned), "code points")


def write_slow():
    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    assert transformers.__version__.startswith("4."), "the slow CLIPTokenizer needs transformers 4.x"
    recs = [json.loads(l) for l in gzip.open(os.path.join(FIX, "corpus.jsonl.gz"), "rt", encoding="utf-8")]
    corpus = [r["text"] for r in recs]
    slow = CLIPTokenizer.from_pretrained(os.path.join(FIX, "hf"))
    fast4 = CLIPTokenizerFast.from_pretrained(os.path.join(FIX, "hf"))
    s_ids = unpadded(slow(corpus, padding="max_length", truncation=True, max_length=CONTEXT))
    f_ids = unpadded(fast4(corpus, padding="max_length", truncation=True, max_length=CONTEXT))
    path = os.path.join(FIX, "slow.jsonl.gz")
    n_diff = n_fast4 = 0
    with gzip.open(path, "wt", encoding="utf-8", newline="\n") as f:
        for r, s, f4 in zip(recs, s_ids, f_ids):
            if f4 != r["hf"]:
                n_fast4 += 1
                print("fast v4 != fast v5:", repr(r["text"])[:80])
            if s != r["hf"]:
                n_diff += 1
                f.write(json.dumps({"text": r["text"], "hf_slow": s, "hf": r["hf"]}, ensure_ascii=False) + "\n")
    print(f"slow differs from fast on {n_diff} of {len(recs)} strings; fast 4.x differs from fast 5.x on {n_fast4}")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "all"
    if cmd in ("assets", "all"):
        write_assets()
    if cmd in ("hf", "all"):
        write_hf_dir()
    if cmd in ("corpus", "all"):
        write_corpus()
    if cmd in ("sweep", "all"):
        write_sweep()
    if cmd == "slow":
        write_slow()
