//! Text cleaning of the open_clip convention: ftfy's default `fix_text`, Python's `html.unescape`
//! and Python's notion of whitespace, written in Rust.
//!
//! open_clip cleans every caption with `ftfy.fix_text`, then `html.unescape` twice, then strips,
//! collapses whitespace and lowercases. The functions here reproduce those steps so that the token
//! ids match open_clip's exactly.
//!
//! # ftfy rules implemented
//!
//! [`fix_text`] follows ftfy 6.3's default configuration, one line (segment) at a time, repeating
//! the fixers until the text stops changing:
//!
//! - HTML entities (`&eacute;`, `&#x2019;`, all-caps `&EACUTE;`), only the unambiguous ones that
//!   end in a semicolon, and only until a line containing `<` is met (then the text is taken to be
//!   real HTML and entities are kept for the rest of the text, as ftfy does);
//! - mojibake: text that was UTF-8 but was decoded as Latin-1, Windows-1252, -1251, -1250, -1253,
//!   -1254, -1257, ISO-8859-2, MacRoman or CP437, once or several times, detected with ftfy's
//!   "badness" heuristic; including the sub-rules that put back a no-break space turned into a
//!   space, that replace sequences damaged by `�` with `�`, that decode CESU-8 and Java's
//!   `C0 80` null, that fix mojibake embedded in otherwise correct text, and that read stray C1
//!   control characters as Windows-1252;
//! - Latin ligatures (`ﬁ` → `fi`) and Serbo-Croatian digraphs (`ǅ` → `Dž`);
//! - fullwidth and halfwidth forms (`ＬＯＵＤ` → `LOUD`, U+3000 → space);
//! - curly quotes to straight quotes;
//! - line breaks (`\r\n`, `\r`, U+2028, U+2029, U+0085) to `\n`;
//! - ANSI terminal escapes (`ESC [ … letter`);
//! - control characters that have no visible effect (C0 controls other than `\t \n \f \r`, DEL,
//!   U+206A–U+206F, U+FEFF, U+FFF9–U+FFFC);
//! - NFC normalisation.
//!
//! # Known differences from ftfy
//!
//! - ftfy's `fix_surrogates` has nothing to do: a Rust `&str` cannot hold UTF-16 surrogates.
//! - Unicode tables: Python 3.11 uses Unicode 14 for NFC, lowercasing and `\d`/`\w`; the Rust
//!   side uses the Unicode version of the `unicode-normalization` crate and of the standard library
//!   (newer). Characters assigned after Unicode 14 can normalise or lowercase differently.
//! - Python's `int()` refuses numeric character references with more than 4,300 digits (and
//!   open_clip then raises an exception); here such a reference decodes to U+FFFD like any other
//!   out-of-range number.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

// ---------------------------------------------------------------------------------------------
// Python whitespace

/// Whether Python's `str.isspace()` is true for `c` (the whitespace that `str.split()` and
/// `str.strip()` use): Unicode `White_Space` plus the four information separators U+001C–U+001F.
pub fn is_python_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `" ".join(text.split())`: words separated by single spaces, no leading or trailing
/// whitespace.
pub fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_python_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// open_clip's default text cleaning (`_clean_lower`): [`fix_text`], [`html_unescape`] twice,
/// whitespace collapsed to single spaces and trimmed, then lowercased (Python's `str.lower`,
/// which, like Rust's `str::to_lowercase`, writes a word-final capital sigma as `ς`).
///
/// ```
/// use gclip::input::text_clean::clean_open_clip;
/// assert_eq!(clean_open_clip("  A Photo&amp;amp;Text\r\n of ‘YOU’  "), "a photo&text of 'you'");
/// ```
pub fn clean_open_clip(text: &str) -> String {
    if is_plain_ascii(text) {
        let mut out = collapse_whitespace(text);
        out.make_ascii_lowercase();
        return out;
    }
    let fixed = fix_text(text);
    let once = html_unescape(&fixed);
    let twice = html_unescape(&once);
    collapse_whitespace(&twice).to_lowercase()
}

// ---------------------------------------------------------------------------------------------
// HTML character references

struct Entities {
    /// Python's `html.entities.html5`: names (with their `;` where the standard has one) to text.
    html5: HashMap<&'static str, String>,
    /// ftfy's table: `&name;` to text, for the names that end in `;`, plus all-caps variants of
    /// the lowercase names whose all-caps spelling is not itself an entity.
    ftfy: HashMap<String, String>,
}

fn entities() -> &'static Entities {
    static ENTITIES: OnceLock<Entities> = OnceLock::new();
    ENTITIES.get_or_init(|| {
        let mut html5 = HashMap::new();
        for line in include_str!("../../assets/html5_entities.tsv").lines() {
            let Some((name, hex)) = line.split_once('\t') else {
                continue;
            };
            let value: String = hex
                .split(' ')
                .filter_map(|h| u32::from_str_radix(h, 16).ok())
                .filter_map(char::from_u32)
                .collect();
            html5.insert(name, value);
        }
        let mut ftfy = HashMap::new();
        for (name, value) in &html5 {
            if !name.ends_with(';') {
                continue;
            }
            ftfy.insert(format!("&{name}"), value.clone());
            if !name.bytes().any(|b| b.is_ascii_uppercase()) {
                let upper = format!("&{}", name.to_ascii_uppercase());
                if unescape_with(&upper, &html5) == upper {
                    ftfy.insert(upper, value.to_uppercase());
                }
            }
        }
        Entities { html5, ftfy }
    })
}

/// What a numeric character reference decodes to, by Python's `html.unescape` rules (which follow
/// the HTML5 parsing rules: Windows-1252 for 0x80–0x9F, U+FFFD for 0, surrogates and numbers past
/// U+10FFFF, nothing for the non-characters and most controls).
fn numeric_reference(num: u64) -> Cow<'static, str> {
    const WIN1252_C1: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    let c = match num {
        0 => '\u{fffd}',
        0x0d => '\r',
        0x80..=0x9f => WIN1252_C1[(num - 0x80) as usize],
        0xd800..=0xdfff => '\u{fffd}',
        n if n > 0x10ffff => '\u{fffd}',
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => return Cow::Borrowed(""),
        n if n & 0xfffe == 0xfffe => return Cow::Borrowed(""),
        n => char::from_u32(n as u32).unwrap_or('\u{fffd}'),
    };
    Cow::Owned(c.to_string())
}

/// Python's `html.unescape`: decodes every named and numeric character reference the way an HTML5
/// parser does, including names without their `;` (`&amp`, `&copy2020` → `©2020`).
///
/// ```
/// use gclip::input::text_clean::html_unescape;
/// assert_eq!(html_unescape("Tom &amp; Jerry &#x2019;s &copy2020"), "Tom & Jerry ’s ©2020");
/// ```
pub fn html_unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    Cow::Owned(unescape_with(text, &entities().html5))
}

fn unescape_with(text: &str, html5: &HashMap<&'static str, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match character_reference(after, html5, &mut out) {
            Some(consumed) => rest = &after[consumed..],
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the reference that starts right after a `&`, appending its text to `out`; returns the
/// number of bytes it used, or `None` when nothing there looks like a reference.
fn character_reference(
    after: &str,
    html5: &HashMap<&'static str, String>,
    out: &mut String,
) -> Option<usize> {
    let bytes = after.as_bytes();
    if bytes.first() == Some(&b'#') {
        let (radix, start) = match bytes.get(1) {
            Some(b'x' | b'X') => (16, 2),
            _ => (10, 1),
        };
        let digits = bytes[start..]
            .iter()
            .take_while(|b| {
                if radix == 16 {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let mut num: u64 = 0;
        for &b in &bytes[start..start + digits] {
            let d = (b as char).to_digit(radix).unwrap_or(0) as u64;
            num = num.saturating_mul(radix as u64).saturating_add(d);
        }
        let mut end = start + digits;
        if bytes.get(end) == Some(&b';') {
            end += 1;
        }
        out.push_str(&numeric_reference(num));
        return Some(end);
    }
    // A name: up to 32 characters other than tab, newline, form feed, space, `<`, `&`, `#`, `;`,
    // then an optional `;`.
    let mut end = 0;
    for (count, (i, c)) in after.char_indices().enumerate() {
        if count == 32 || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';') {
            break;
        }
        end = i + c.len_utf8();
    }
    if end == 0 {
        return None;
    }
    if bytes.get(end) == Some(&b';') {
        end += 1;
    }
    let name = &after[..end];
    if let Some(value) = html5.get(name) {
        out.push_str(value);
        return Some(end);
    }
    // The longest prefix (of at least two characters) that is an entity name (these are the
    // legacy names that may go without `;`), followed by the rest as it was.
    let boundaries: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in boundaries.iter().rev() {
        if let Some(value) = html5.get(&name[..cut]) {
            out.push_str(value);
            out.push_str(&name[cut..]);
            return Some(end);
        }
    }
    out.push('&');
    out.push_str(name);
    Some(end)
}

/// ftfy's `unescape_html`: decodes `&name;` and `&#number;` references (1 to 24 ASCII letters or
/// digits between `&` or `&#` and `;`), plus all-caps versions of lowercase entity names, and
/// leaves everything else alone (`this&not that` stays as it is).
pub fn ftfy_unescape_html(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let table = &entities().ftfy;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let hash = usize::from(after.starts_with('#'));
        let run = after.as_bytes()[hash..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if (1..=24).contains(&run) && after.as_bytes().get(hash + run) == Some(&b';') {
            let entity = &rest[pos..pos + 1 + hash + run + 1];
            if let Some(value) = table.get(entity) {
                out.push_str(value);
            } else if hash == 1 {
                let decoded = html_unescape(entity);
                if decoded.contains(';') {
                    out.push_str(entity);
                } else {
                    out.push_str(&decoded);
                }
            } else {
                out.push_str(entity);
            }
            rest = &rest[pos + entity.len()..];
        } else {
            out.push('&');
            rest = after;
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// fix_text

/// ftfy's `fix_text` with its default configuration.
///
/// The text is fixed one line at a time (a segment ends after each `\n`, or after a million
/// characters). HTML entities are decoded until the first line that contains `<`; from there on
/// the text is taken to be HTML and entities are kept.
///
/// ```
/// use gclip::input::text_clean::fix_text;
/// assert_eq!(fix_text("âœ” No problems"), "✔ No problems");
/// assert_eq!(fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"), "Broken text… it's flubberific!");
/// assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
/// ```
pub fn fix_text(text: &str) -> Cow<'_, str> {
    if is_plain_ascii(text) {
        return Cow::Borrowed(text);
    }
    const MAX_SEGMENT_CHARS: usize = 1_000_000;
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut line = line;
        while !line.is_empty() {
            let cut = if line.len() > MAX_SEGMENT_CHARS {
                line.char_indices()
                    .nth(MAX_SEGMENT_CHARS)
                    .map_or(line.len(), |(i, _)| i)
            } else {
                line.len()
            };
            let (segment, rest) = line.split_at(cut);
            if unescape && segment.contains('<') {
                unescape = false;
            }
            out.push_str(&fix_segment(segment, unescape));
            line = rest;
        }
    }
    Cow::Owned(out)
}

/// Text that no ftfy rule changes: printable ASCII, tabs, newlines and form feeds, with no `&`.
fn is_plain_ascii(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\x0c') && b != b'&')
}

/// One segment, all fixers, repeated until nothing changes (ftfy's `fix_and_explain`).
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    loop {
        let mut next: Cow<'_, str> = Cow::Borrowed(&text);
        if unescape {
            next = own_or_keep(next, ftfy_unescape_html);
        }
        next = Cow::Owned(fix_encoding(&next));
        next = own_or_keep(next, fix_c1_controls);
        next = own_or_keep(next, fix_latin_ligatures);
        next = own_or_keep(next, fix_character_width);
        next = own_or_keep(next, uncurl_quotes);
        next = own_or_keep(next, fix_line_breaks);
        next = own_or_keep(next, remove_terminal_escapes);
        next = own_or_keep(next, remove_control_chars);
        next = own_or_keep(next, nfc);
        if *next == *text {
            return text;
        }
        text = next.into_owned();
    }
}

fn own_or_keep<'a>(
    text: Cow<'a, str>,
    f: impl for<'b> Fn(&'b str) -> Cow<'b, str>,
) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(s) => f(s),
        Cow::Owned(s) => match f(&s) {
            Cow::Borrowed(_) => Cow::Owned(s),
            Cow::Owned(fixed) => Cow::Owned(fixed),
        },
    }
}

/// Replaces characters by a per-character mapping, borrowing when nothing is mapped.
fn map_chars<'a>(text: &'a str, f: impl Fn(char) -> Option<&'static str>) -> Cow<'a, str> {
    let Some(first) = text
        .char_indices()
        .find(|&(_, c)| f(c).is_some())
        .map(|(i, _)| i)
    else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match f(c) {
            Some(s) => out.push_str(s),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// ftfy's `fix_latin_ligatures`: single-character Latin ligatures and digraphs to their letters.
pub fn fix_latin_ligatures(text: &str) -> Cow<'_, str> {
    map_chars(text, |c| {
        Some(match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => return None,
        })
    })
}

/// ftfy's `fix_character_width`: fullwidth and halfwidth forms (U+FF01–U+FFEF) to their NFKC
/// equivalents, and the ideographic space U+3000 to a plain space.
pub fn fix_character_width(text: &str) -> Cow<'_, str> {
    let needs = |c: char| c == '\u{3000}' || ('\u{ff01}'..='\u{ffef}').contains(&c);
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{3000}' {
            out.push(' ');
        } else if ('\u{ff01}'..='\u{ffef}').contains(&c) {
            out.extend(std::iter::once(c).nfkc());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// ftfy's `uncurl_quotes`: U+02BC and U+2018–U+201B to `'`, U+201C–U+201F to `"`.
pub fn uncurl_quotes(text: &str) -> Cow<'_, str> {
    map_chars(text, |c| match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some("'"),
        '\u{201c}'..='\u{201f}' => Some("\""),
        _ => None,
    })
}

/// ftfy's `fix_line_breaks`: `\r\n`, `\r`, U+2028, U+2029 and U+0085 to `\n`.
pub fn fix_line_breaks(text: &str) -> Cow<'_, str> {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// ftfy's `remove_terminal_escapes`: ANSI sequences `ESC [ digits-and-semicolons letter`.
pub fn remove_terminal_escapes(text: &str) -> Cow<'_, str> {
    if !text.contains('\x1b') {
        return Cow::Borrowed(text);
    }
    static ANSI: OnceLock<Regex> = OnceLock::new();
    let re = ANSI.get_or_init(|| Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").expect("valid regex"));
    re.replace_all(text, "")
}

/// ftfy's `remove_control_chars`: C0 controls other than `\t \n \f \r`, DEL, the deprecated
/// Arabic format characters U+206A–U+206F, the byte order mark U+FEFF and the interlinear
/// annotation characters and object replacement character U+FFF9–U+FFFC.
pub fn remove_control_chars(text: &str) -> Cow<'_, str> {
    let removed = |c: char| {
        matches!(
            c,
            '\0'..='\x08'
                | '\x0b'
                | '\x0e'..='\x1f'
                | '\x7f'
                | '\u{206a}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffc}'
        )
    };
    if !text.chars().any(removed) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|&c| !removed(c)).collect())
}

/// Unicode NFC normalisation, borrowing when the text is already in NFC.
pub fn nfc(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        return Cow::Borrowed(text);
    }
    let normalized: String = text.nfc().collect();
    if normalized == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(normalized)
    }
}

/// ftfy's `fix_c1_controls`: each C1 control character U+0080–U+009F read as the Windows-1252
/// byte of the same number (the five bytes Windows-1252 leaves undefined stay as they are).
pub fn fix_c1_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if ('\u{80}'..='\u{9f}').contains(&c) {
                    Charmap::Windows1252.decode_byte(c as u32 as u8)
                } else {
                    c
                }
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Mojibake

/// ftfy's `fix_encoding`: undoes mojibake, step by step, until the text stops changing.
pub fn fix_encoding(text: &str) -> String {
    let mut text = text.to_owned();
    loop {
        match fix_encoding_step(&text) {
            Some(fixed) if fixed != text => text = fixed,
            _ => return text,
        }
    }
}

/// One step of [`fix_encoding`]; `None` when the text is left as it is.
fn fix_encoding_step(text: &str) -> Option<String> {
    if text.is_ascii() || !is_bad(text) {
        return None;
    }
    let mut possible = Vec::with_capacity(CHARMAPS.len());
    for &charmap in &CHARMAPS {
        let Some(mut bytes) = charmap.encode(text) else {
            continue;
        };
        possible.push(charmap);
        if charmap != Charmap::MacRoman && altered_utf8_re().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if charmap.is_sloppy() {
            bytes = lossy_utf8_re()
                .replace_all(&bytes, "\u{fffd}".as_bytes())
                .into_owned();
        }
        if let Some(decoded) = decode_utf8_variants(&bytes) {
            return Some(decoded);
        }
    }
    if utf8_detector_find(text, 0).is_some() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return Some(fixed);
        }
    }
    if possible.contains(&Charmap::Latin1) {
        if possible.contains(&Charmap::Windows1252) {
            return None;
        }
        // Latin-1 but not Windows-1252: C1 controls. Read the whole text as (strict) Windows-1252.
        const UNDEFINED: [u32; 5] = [0x81, 0x8d, 0x8f, 0x90, 0x9d];
        if !text.chars().any(|c| UNDEFINED.contains(&(c as u32))) {
            let fixed: String = text
                .chars()
                .map(|c| Charmap::Windows1252.decode_byte(c as u32 as u8))
                .collect();
            if fixed != text {
                return Some(fixed);
            }
        }
    }
    if text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return Some(fix_c1_controls(text).into_owned());
    }
    None
}

/// Single-byte encodings ftfy tries, in its order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Charmap {
    Latin1,
    Windows1252,
    Windows1251,
    Windows1250,
    Windows1253,
    Windows1254,
    Windows1257,
    Iso8859_2,
    MacRoman,
    Cp437,
}

const CHARMAPS: [Charmap; 10] = [
    Charmap::Latin1,
    Charmap::Windows1252,
    Charmap::Windows1251,
    Charmap::Windows1250,
    Charmap::Windows1253,
    Charmap::Windows1254,
    Charmap::Windows1257,
    Charmap::Iso8859_2,
    Charmap::MacRoman,
    Charmap::Cp437,
];

impl Charmap {
    fn high_half(self) -> Option<&'static [u16; 128]> {
        use charmaps::*;
        Some(match self {
            Charmap::Latin1 => return None,
            Charmap::Windows1252 => &WINDOWS_1252,
            Charmap::Windows1251 => &WINDOWS_1251,
            Charmap::Windows1250 => &WINDOWS_1250,
            Charmap::Windows1253 => &WINDOWS_1253,
            Charmap::Windows1254 => &WINDOWS_1254,
            Charmap::Windows1257 => &WINDOWS_1257,
            Charmap::Iso8859_2 => &ISO_8859_2,
            Charmap::MacRoman => &MAC_ROMAN,
            Charmap::Cp437 => &CP437,
        })
    }

    /// ftfy's "sloppy" Windows code pages: their holes decode to the Latin-1 character of the
    /// same number, and byte 0x1A stands for U+FFFD.
    fn is_sloppy(self) -> bool {
        matches!(
            self,
            Charmap::Windows1252
                | Charmap::Windows1251
                | Charmap::Windows1250
                | Charmap::Windows1253
                | Charmap::Windows1254
                | Charmap::Windows1257
        )
    }

    fn decode_byte(self, b: u8) -> char {
        if b < 0x80 {
            if b == 0x1a && self.is_sloppy() {
                return '\u{fffd}';
            }
            return b as char;
        }
        match self.high_half() {
            None => b as char,
            Some(table) => char::from_u32(table[(b - 0x80) as usize] as u32).unwrap_or('\u{fffd}'),
        }
    }

    fn encode_char(self, c: char) -> Option<u8> {
        let cp = c as u32;
        if cp < 0x80 {
            if cp == 0x1a && self.is_sloppy() {
                return None;
            }
            return Some(cp as u8);
        }
        if cp == 0xfffd && self.is_sloppy() {
            return Some(0x1a);
        }
        match self.high_half() {
            None => (cp <= 0xff).then_some(cp as u8),
            Some(table) => table
                .iter()
                .position(|&t| t as u32 == cp)
                .map(|i| 0x80 + i as u8),
        }
    }

    fn encode(self, text: &str) -> Option<Vec<u8>> {
        text.chars().map(|c| self.encode_char(c)).collect()
    }
}

/// ftfy's "utf-8-variants" decoder: strict UTF-8, plus CESU-8 surrogate pairs (six bytes
/// `ED A0-AF 80-BF ED B0-BF 80-BF`) and Java's two-byte null `C0 80`. `None` where Python's
/// decoder raises an error.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // ftfy finds these with a Python regex whose `$` also matches before a final `\n`: a
        // `C0` or a six-byte CESU-8 pair whose last byte is a newline ending the input takes
        // that newline as its last byte. Reproduced for exactness.
        let final_newline = |k: usize| k + 1 == bytes.len() && bytes[k] == b'\n';
        let special = (b == 0xc0 && (bytes.get(i + 1) == Some(&0x80) || final_newline(i + 1)))
            || (b == 0xed && matches!(bytes.get(i + 1), Some(0xa0..=0xbf)));
        if !special {
            i += 1;
            continue;
        }
        out.push_str(std::str::from_utf8(&bytes[start..i]).ok()?);
        if b == 0xc0 {
            out.push('\0');
            i += 2;
        } else {
            let s = bytes.get(i..i + 6)?;
            if !(matches!(s[1], 0xa0..=0xaf)
                && matches!(s[2], 0x80..=0xbf)
                && s[3] == 0xed
                && matches!(s[4], 0xb0..=0xbf)
                && (matches!(s[5], 0x80..=0xbf) || final_newline(i + 5)))
            {
                return None;
            }
            let cp = (((s[1] & 0x0f) as u32) << 16)
                + (((s[2] & 0x3f) as u32) << 10)
                + (((s[4] & 0x0f) as u32) << 6)
                + (s[5] & 0x3f) as u32
                + 0x10000;
            out.push(char::from_u32(cp)?);
            i += 6;
        }
        start = i;
    }
    out.push_str(std::str::from_utf8(&bytes[start..]).ok()?);
    Some(out)
}

/// UTF-8 sequences that would be valid if a byte A0 had not been turned into a space.
fn altered_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(concat!(
            r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9]\x20",
            r"|[\xe2\xe3]\x20[\x80-\x84\x86-\x9f\xa1-\xbf]",
            r"|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf]\x20",
            r"|\xf0\x20[\x80-\xbf][\x80-\xbf]",
            r"|\xf0[\x80-\xbf]\x20[\x80-\xbf]",
            r"|\xf0[\x80-\xbf][\x80-\xbf]\x20",
        ))
        .expect("valid regex")
    })
}

/// UTF-8 (and CESU-8) sequences some of whose bytes were lost to `�` (byte 1A in the sloppy
/// code pages) or, at most once, to `?`.
fn lossy_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(concat!(
            r"(?-u)[\xc2-\xdf]\x1a",
            r"|[\xc2-\xc3]\?",
            r"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]",
            r"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]",
            r"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]",
            r"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]",
            r"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]",
            r"|\x1a",
        ))
        .expect("valid regex")
    })
}

/// ftfy's `restore_byte_a0`: puts back byte A0 where a space broke a UTF-8 sequence. A lone `Ã`
/// followed by a space becomes `à` plus the space (French "à la"), except before the Portuguese
/// words "às", "àquele", "àquela", "àquilo".
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut step1 = Vec::with_capacity(bytes.len() + 4);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xc3 && bytes.get(i + 1) == Some(&b' ') {
            let rest = &bytes[i + 2..];
            let exception = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|p| rest.starts_with(p));
            if !exception {
                step1.extend_from_slice(&[0xc3, 0xa0, b' ']);
                i += 2;
                continue;
            }
        }
        step1.push(bytes[i]);
        i += 1;
    }
    altered_utf8_re()
        .replace_all(&step1, |m: &regex::bytes::Captures<'_>| {
            m[0].iter()
                .map(|&b| if b == b' ' { 0xa0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// ftfy's `decode_inconsistent_utf8`: fixes each run of UTF-8-looking mojibake on its own, when
/// the run is shorter than the whole text and looks bad by itself.
fn decode_inconsistent_utf8(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some((start, end)) = utf8_detector_find_chars(&chars, pos) {
        out.extend(&chars[pos..start]);
        let sub: String = chars[start..end].iter().collect();
        if end - start < chars.len() && is_bad(&sub) {
            out.push_str(&fix_encoding(&sub));
        } else {
            out.push_str(&sub);
        }
        pos = end;
    }
    out.extend(&chars[pos..]);
    out
}

fn utf8_detector_find(text: &str, from: usize) -> Option<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    utf8_detector_find_chars(&chars, from)
}

/// The first run, at or after `from`, of characters that look like UTF-8 read as a single-byte
/// encoding: one or more "lead byte + continuation bytes" groups, not preceded by a character that
/// is only ever a continuation byte. Returns character indices `[start, end)`.
fn utf8_detector_find_chars(chars: &[char], from: usize) -> Option<(usize, usize)> {
    let group_len = |i: usize| -> Option<usize> {
        let c = *chars.get(i)?;
        let cont = |k: usize| {
            (1..=k).all(|j| {
                chars
                    .get(i + j)
                    .is_some_and(|&c| in_ranges(c, UTF8_CONTINUATION))
            })
        };
        if in_ranges(c, UTF8_FIRST_OF_2) && cont(1) {
            Some(2)
        } else if in_ranges(c, UTF8_FIRST_OF_3) && cont(2) {
            Some(3)
        } else if in_ranges(c, UTF8_FIRST_OF_4) && cont(3) {
            Some(4)
        } else {
            None
        }
    };
    for start in from..chars.len() {
        if start > 0 && in_ranges(chars[start - 1], UTF8_CONTINUATION_STRICT) {
            continue;
        }
        let Some(first) = group_len(start) else {
            continue;
        };
        let mut end = start + first;
        while let Some(n) = group_len(end) {
            end += n;
        }
        return Some((start, end));
    }
    None
}

fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let cp = c as u32;
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

// Characters that a Latin-1-like code page produces from UTF-8 lead bytes C2–DF, E0–EF and
// F0/F3, and from continuation bytes 80–BF (the latter also with a space for A0), over the
// code pages above: ftfy's clues for spotting a run of mojibake inside correct text.
const UTF8_FIRST_OF_2: &[(u32, u32)] = &[
    (0xc2, 0xdf),
    (0x100, 0x100),
    (0x102, 0x102),
    (0x106, 0x106),
    (0x10c, 0x10c),
    (0x10e, 0x10e),
    (0x110, 0x110),
    (0x112, 0x112),
    (0x116, 0x116),
    (0x118, 0x118),
    (0x11a, 0x11a),
    (0x11e, 0x11e),
    (0x122, 0x122),
    (0x12a, 0x12a),
    (0x130, 0x130),
    (0x136, 0x136),
    (0x139, 0x139),
    (0x13b, 0x13b),
    (0x141, 0x141),
    (0x143, 0x143),
    (0x145, 0x145),
    (0x147, 0x147),
    (0x14c, 0x14c),
    (0x150, 0x150),
    (0x158, 0x158),
    (0x15a, 0x15a),
    (0x15e, 0x15e),
    (0x160, 0x160),
    (0x162, 0x162),
    (0x16a, 0x16a),
    (0x16e, 0x16e),
    (0x170, 0x170),
    (0x172, 0x172),
    (0x179, 0x179),
    (0x17b, 0x17b),
    (0x17d, 0x17d),
    (0x392, 0x3a1),
    (0x3a3, 0x3af),
    (0x412, 0x42f),
];
const UTF8_FIRST_OF_3: &[(u32, u32)] = &[
    (0xe0, 0xef),
    (0x101, 0x101),
    (0x103, 0x103),
    (0x105, 0x105),
    (0x107, 0x107),
    (0x10d, 0x10d),
    (0x10f, 0x10f),
    (0x113, 0x113),
    (0x117, 0x117),
    (0x119, 0x119),
    (0x11b, 0x11b),
    (0x123, 0x123),
    (0x12b, 0x12b),
    (0x12f, 0x12f),
    (0x137, 0x137),
    (0x13a, 0x13a),
    (0x13c, 0x13c),
    (0x155, 0x155),
    (0x17a, 0x17a),
    (0x3b0, 0x3bf),
    (0x430, 0x43f),
];
const UTF8_FIRST_OF_4: &[(u32, u32)] = &[
    (0xf0, 0xf0),
    (0xf3, 0xf3),
    (0x111, 0x111),
    (0x11f, 0x11f),
    (0x161, 0x161),
    (0x3c0, 0x3c0),
    (0x3c3, 0x3c3),
    (0x440, 0x440),
    (0x443, 0x443),
];
const UTF8_CONTINUATION: &[(u32, u32)] = &[
    (0x20, 0x20),
    (0x80, 0xbf),
    (0xc6, 0xc6),
    (0xd8, 0xd8),
    (0xe6, 0xe6),
    (0xf8, 0xf8),
    (0x104, 0x105),
    (0x13d, 0x13e),
    (0x141, 0x142),
    (0x152, 0x153),
    (0x156, 0x157),
    (0x15a, 0x15b),
    (0x15e, 0x161),
    (0x164, 0x165),
    (0x178, 0x17e),
    (0x192, 0x192),
    (0x2c6, 0x2c7),
    (0x2d8, 0x2d8),
    (0x2db, 0x2dd),
    (0x384, 0x386),
    (0x388, 0x38a),
    (0x38c, 0x38c),
    (0x38e, 0x38f),
    (0x401, 0x40c),
    (0x40e, 0x40f),
    (0x451, 0x45c),
    (0x45e, 0x45f),
    (0x490, 0x491),
    (0x2013, 0x2015),
    (0x2018, 0x201a),
    (0x201c, 0x201e),
    (0x2020, 0x2022),
    (0x2026, 0x2026),
    (0x2030, 0x2030),
    (0x2039, 0x203a),
    (0x20ac, 0x20ac),
    (0x2116, 0x2116),
    (0x2122, 0x2122),
];
/// Continuation-byte characters that hardly ever stand for themselves next to mojibake (no space,
/// dashes, quotes, bullet or ellipsis).
const UTF8_CONTINUATION_STRICT: &[(u32, u32)] = &[
    (0x80, 0xbf),
    (0xc6, 0xc6),
    (0xd8, 0xd8),
    (0xe6, 0xe6),
    (0xf8, 0xf8),
    (0x104, 0x105),
    (0x13d, 0x13e),
    (0x141, 0x142),
    (0x152, 0x153),
    (0x156, 0x157),
    (0x15a, 0x15b),
    (0x15e, 0x161),
    (0x164, 0x165),
    (0x178, 0x17e),
    (0x192, 0x192),
    (0x2c6, 0x2c7),
    (0x2d8, 0x2d8),
    (0x2db, 0x2dd),
    (0x384, 0x386),
    (0x388, 0x38a),
    (0x38c, 0x38c),
    (0x38e, 0x38f),
    (0x401, 0x40c),
    (0x40e, 0x40f),
    (0x451, 0x45c),
    (0x45e, 0x45f),
    (0x490, 0x491),
    (0x2020, 0x2021),
    (0x2030, 0x2030),
    (0x2039, 0x203a),
    (0x20ac, 0x20ac),
    (0x2116, 0x2116),
    (0x2122, 0x2122),
];

// ---------------------------------------------------------------------------------------------
// The "badness" heuristic

/// The character categories of ftfy's badness heuristic, as regex class bodies. Every character
/// here is one that shows up in UTF-8 mojibake; sequences of them in unlikely orders are what
/// marks text as broken.
mod cat {
    /// Common in real text too: no-break space, soft hyphen, middle dot, acute accent, dashes,
    /// horizontal bar, ellipsis, right single quote.
    pub const COMMON: &str = r"\xa0\xad\xb4\xb7\x{2013}-\x{2015}\x{2019}\x{2026}";
    pub const C1: &str = r"\x80-\x9f";
    /// Almost only ever seen in mojibake.
    pub const BAD: &str = r"\xa4\xa6\xa8\xaa\xac\xaf\xb8\xba\x{192}\x{2c6}\x{2c7}\x{2d8}\x{2db}\x{2dc}\x{2020}\x{2021}\x{2030}\x{2310}\x{25ca}\x{fffd}";
    pub const LAW: &str = r"\xa7\xb6";
    pub const CURRENCY: &str = r"\xa2\xa3\xa5\x{20a7}\x{20ac}";
    pub const START_PUNCT: &str =
        r"\xa1\xa9\xab\xbf\x{384}\x{385}\x{2018}\x{201a}\x{201c}\x{201e}\x{2022}\x{2039}\x{f8ff}";
    pub const END_PUNCT: &str = r"\xae\xbb\x{2dd}\x{201d}\x{203a}\x{2122}";
    pub const NUMERIC: &str = r"\xb1-\xb3\xb5\xb9\xbc-\xbe\xd7\xf7\x{2044}\x{2116}\x{2202}\x{2206}\x{220f}\x{2211}\x{221a}\x{221e}\x{2229}\x{222b}\x{2248}\x{2260}\x{2261}\x{2264}\x{2265}";
    /// Letters that emoticons (kaomoji) are drawn with.
    pub const KAOMOJI: &str =
        r"\xb0\xd2-\xd6\xd9-\xdc\xf2-\xf6\xf8-\xfc\x{14c}\x{150}\x{16a}\x{172}";
    pub const UPPER_ACCENTED: &str = r"\xc0-\xd1\xd8\xdc\xdd\x{100}\x{102}\x{104}\x{106}\x{10c}\x{10e}\x{110}\x{112}\x{116}\x{118}\x{11a}\x{11e}\x{122}\x{12a}\x{130}\x{136}\x{139}\x{13b}\x{13d}\x{141}\x{143}\x{145}\x{147}\x{152}\x{158}\x{15a}\x{15e}\x{160}\x{162}\x{164}\x{16e}\x{170}\x{178}\x{179}\x{17b}\x{17d}\x{490}";
    pub const LOWER_ACCENTED: &str = r"\xdf-\xf1\xfc\x{101}\x{103}\x{105}\x{107}\x{10d}\x{10f}\x{111}\x{113}\x{117}\x{119}\x{11b}\x{11f}\x{123}\x{12b}\x{12f}\x{137}\x{13a}\x{13c}\x{13e}\x{142}\x{153}\x{155}\x{15b}\x{15f}\x{161}\x{165}\x{17a}\x{17c}\x{17e}\x{491}\x{fb01}\x{fb02}";
    pub const UPPER_COMMON: &str =
        r"\xde\x{386}\x{388}-\x{38a}\x{38c}\x{38e}\x{38f}\x{391}-\x{3ab}\x{401}-\x{42f}";
    pub const LOWER_COMMON: &str = r"\x{3ac}-\x{3c9}\x{430}-\x{45f}";
    pub const BOX: &str = r"\x{2502}\x{250c}\x{2510}\x{2518}\x{251c}\x{2524}\x{252c}\x{253c}\x{2550}-\x{256c}\x{2580}\x{2584}\x{2588}\x{258c}\x{2590}-\x{2593}";
}

/// ftfy's `is_bad`: whether the text contains a sequence of characters that is far more likely
/// to be mojibake than intended.
pub fn is_bad(text: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(build_badness_regex).is_match(text)
}

fn build_badness_regex() -> Regex {
    use cat::*;
    // Python's `\s` (str.isspace) and `\w` (str.isalnum or `_`), and `.` without newline.
    let space = r"[\t-\r\x1c-\x20\x85\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]";
    let word = r"[\p{L}\p{N}_]";
    let class = |parts: &[&str]| format!("[{}]", parts.concat());
    let accented = [LOWER_ACCENTED, UPPER_ACCENTED].concat();
    let arabic_follow = class(&[
        COMMON,
        CURRENCY,
        BAD,
        NUMERIC,
        START_PUNCT,
        r"\x{178}\x{160}\xae\xb0\xb5\xbb",
    ]);
    let sequences: Vec<String> = vec![
        class(&[C1]),
        // A "bad" character next to other mojibake-prone characters.
        format!(
            "{}{}",
            class(&[
                BAD,
                &accented,
                BOX,
                START_PUNCT,
                END_PUNCT,
                CURRENCY,
                NUMERIC,
                LAW
            ]),
            class(&[BAD])
        ),
        format!(
            "[a-zA-Z]{}{}",
            class(&[LOWER_COMMON, UPPER_COMMON]),
            class(&[BAD])
        ),
        format!(
            "{}{}",
            class(&[BAD]),
            class(&[
                &accented,
                BOX,
                START_PUNCT,
                END_PUNCT,
                CURRENCY,
                NUMERIC,
                LAW
            ])
        ),
        // Unlikely neighbours for accented letters, symbols and box drawings.
        format!(
            "{}{}",
            class(&[
                LOWER_ACCENTED,
                LOWER_COMMON,
                BOX,
                END_PUNCT,
                CURRENCY,
                NUMERIC
            ]),
            class(&[UPPER_ACCENTED])
        ),
        format!(
            "{}{}",
            class(&[BOX, END_PUNCT, CURRENCY, NUMERIC]),
            class(&[LOWER_ACCENTED])
        ),
        format!(
            "{}{}",
            class(&[LOWER_ACCENTED, BOX, END_PUNCT]),
            class(&[CURRENCY])
        ),
        format!("{space}{}{}", class(&[UPPER_ACCENTED]), class(&[CURRENCY])),
        format!(
            "{}{}",
            class(&[UPPER_ACCENTED, BOX]),
            class(&[NUMERIC, LAW])
        ),
        format!(
            "{}{}{}",
            class(&[&accented, BOX, CURRENCY, END_PUNCT]),
            class(&[START_PUNCT]),
            class(&[NUMERIC])
        ),
        format!(
            "{}{}{}",
            class(&[&accented, CURRENCY, NUMERIC, BOX, LAW]),
            class(&[END_PUNCT]),
            class(&[START_PUNCT])
        ),
        format!(
            "{}{}",
            class(&[CURRENCY, NUMERIC, BOX]),
            class(&[START_PUNCT])
        ),
        format!(
            "[a-z]{}{}",
            class(&[UPPER_ACCENTED]),
            class(&[START_PUNCT, CURRENCY])
        ),
        format!("{}{}", class(&[BOX]), class(&[KAOMOJI])),
        format!(
            "{}{}",
            class(&[&accented, CURRENCY, NUMERIC, START_PUNCT, END_PUNCT, LAW]),
            class(&[BOX])
        ),
        format!("{}{}", class(&[BOX]), class(&[END_PUNCT])),
        format!(
            "{}{}{word}",
            class(&[&accented]),
            class(&[START_PUNCT, END_PUNCT])
        ),
        // The ligature œ not followed by an unaccented Latin letter.
        r"[\x{152}\x{153}][^A-Za-z]".to_owned(),
        // A degree sign after a capital accented letter.
        format!("{}\\xb0", class(&[UPPER_ACCENTED])),
        // Two-character Windows-1252 mojibake not caught above.
        format!(
            r"[\xc2\xc3\xce\xd0]{}",
            class(&[
                r"\x{20ac}\x{153}\x{160}\x{161}\xa2\xa3\x{178}\x{17e}\xa0\xad\xae\xa9\xb0\xb7\xbb",
                START_PUNCT,
                END_PUNCT,
                r"\x{2013}\x{2014}\xb4"
            ])
        ),
        r"\xd7[\xb2\xb3]".to_owned(),
        // Windows-1252 mojibake of Arabic: four characters.
        format!(r"[\xd8\xd9]{arabic_follow}[\xd8\xd9]{arabic_follow}"),
        // Windows-1252 mojibake starting three-byte sequences of South Asian scripts.
        r"\xe0[\xb2\xb5\xb9\xbc\xbd\xbe]".to_owned(),
        // MacRoman mojibake.
        r"\x{221a}[\xb1\x{2202}\x{2020}\x{2260}\xae\x{2122}\xb4\x{2264}\x{2265}\xa5\xb5\xf8]"
            .to_owned(),
        r"\x{2248}[\xb0\xa2]".to_owned(),
        r"\x{201a}\xc4[\xec\xee\xef\xf2\xf4\xfa\xf9\xfb\x{2020}\xb0\xa2\x{3c0}]".to_owned(),
        r"\x{201a}[\xe2\xf3][\xe0\xe4\xb0\xea]".to_owned(),
        // Windows-1251 mojibake of U+2000-range characters, Latin-1 and Cyrillic.
        r"\x{432}\x{402}".to_owned(),
        format!(
            r"[\u0412\u0413\u0420\u0421]{}[\u0412\u0413\u0420\u0421]",
            class(&[C1, BAD, START_PUNCT, END_PUNCT, CURRENCY, r"\xb0\xb5"])
        ),
        r"\x{413}\x{45e}\x{412}\x{402}\x{412}[^\n][A-Za-z ]".to_owned(),
        // Windows-1252 encodings of à, á and the no-break space itself.
        r"\xc3[\xa0\xa1]".to_owned(),
        format!(r"[a-z]{space}?[\xc3\xc2] "),
        r"\A[\xc3\xc2] ".to_owned(),
        format!(r"[a-z.,?!{END_PUNCT}]\xc2[ {START_PUNCT}{END_PUNCT}]"),
        // Windows-1253 mojibake of U+2000-range characters, Latin-1 and Greek.
        r"\x{3b2}\x{20ac}[\x{2122}\xa0\x{386}\xad\xae\xb0]".to_owned(),
        format!(
            r"[\u0392\u0393\u039e\u039f]{}[\u0392\u0393\u039e\u039f]",
            class(&[C1, BAD, START_PUNCT, END_PUNCT, CURRENCY, r"\xb0"])
        ),
        // Windows-1257 mojibake of U+2000-range characters.
        r"\x{101}\x{20ac}".to_owned(),
    ];
    Regex::new(&sequences.join("|")).expect("valid regex")
}

/// Code-page tables (the upper half; the lower half of each is ASCII).
mod charmaps {
    /// Bytes 0x80..=0xFF of sloppy-windows-1252 (holes filled with the Latin-1 character of the same number).
    pub const WINDOWS_1252: [u16; 128] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178, 0x00A0,
        0x00A1, 0x00A2, 0x00A3, 0x00A4, 0x00A5, 0x00A6, 0x00A7, 0x00A8, 0x00A9, 0x00AA, 0x00AB,
        0x00AC, 0x00AD, 0x00AE, 0x00AF, 0x00B0, 0x00B1, 0x00B2, 0x00B3, 0x00B4, 0x00B5, 0x00B6,
        0x00B7, 0x00B8, 0x00B9, 0x00BA, 0x00BB, 0x00BC, 0x00BD, 0x00BE, 0x00BF, 0x00C0, 0x00C1,
        0x00C2, 0x00C3, 0x00C4, 0x00C5, 0x00C6, 0x00C7, 0x00C8, 0x00C9, 0x00CA, 0x00CB, 0x00CC,
        0x00CD, 0x00CE, 0x00CF, 0x00D0, 0x00D1, 0x00D2, 0x00D3, 0x00D4, 0x00D5, 0x00D6, 0x00D7,
        0x00D8, 0x00D9, 0x00DA, 0x00DB, 0x00DC, 0x00DD, 0x00DE, 0x00DF, 0x00E0, 0x00E1, 0x00E2,
        0x00E3, 0x00E4, 0x00E5, 0x00E6, 0x00E7, 0x00E8, 0x00E9, 0x00EA, 0x00EB, 0x00EC, 0x00ED,
        0x00EE, 0x00EF, 0x00F0, 0x00F1, 0x00F2, 0x00F3, 0x00F4, 0x00F5, 0x00F6, 0x00F7, 0x00F8,
        0x00F9, 0x00FA, 0x00FB, 0x00FC, 0x00FD, 0x00FE, 0x00FF,
    ];
    /// Bytes 0x80..=0xFF of sloppy-windows-1251 (holes filled with the Latin-1 character of the same number).
    pub const WINDOWS_1251: [u16; 128] = [
        0x0402, 0x0403, 0x201A, 0x0453, 0x201E, 0x2026, 0x2020, 0x2021, 0x20AC, 0x2030, 0x0409,
        0x2039, 0x040A, 0x040C, 0x040B, 0x040F, 0x0452, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x0098, 0x2122, 0x0459, 0x203A, 0x045A, 0x045C, 0x045B, 0x045F, 0x00A0,
        0x040E, 0x045E, 0x0408, 0x00A4, 0x0490, 0x00A6, 0x00A7, 0x0401, 0x00A9, 0x0404, 0x00AB,
        0x00AC, 0x00AD, 0x00AE, 0x0407, 0x00B0, 0x00B1, 0x0406, 0x0456, 0x0491, 0x00B5, 0x00B6,
        0x00B7, 0x0451, 0x2116, 0x0454, 0x00BB, 0x0458, 0x0405, 0x0455, 0x0457, 0x0410, 0x0411,
        0x0412, 0x0413, 0x0414, 0x0415, 0x0416, 0x0417, 0x0418, 0x0419, 0x041A, 0x041B, 0x041C,
        0x041D, 0x041E, 0x041F, 0x0420, 0x0421, 0x0422, 0x0423, 0x0424, 0x0425, 0x0426, 0x0427,
        0x0428, 0x0429, 0x042A, 0x042B, 0x042C, 0x042D, 0x042E, 0x042F, 0x0430, 0x0431, 0x0432,
        0x0433, 0x0434, 0x0435, 0x0436, 0x0437, 0x0438, 0x0439, 0x043A, 0x043B, 0x043C, 0x043D,
        0x043E, 0x043F, 0x0440, 0x0441, 0x0442, 0x0443, 0x0444, 0x0445, 0x0446, 0x0447, 0x0448,
        0x0449, 0x044A, 0x044B, 0x044C, 0x044D, 0x044E, 0x044F,
    ];
    /// Bytes 0x80..=0xFF of sloppy-windows-1250 (holes filled with the Latin-1 character of the same number).
    pub const WINDOWS_1250: [u16; 128] = [
        0x20AC, 0x0081, 0x201A, 0x0083, 0x201E, 0x2026, 0x2020, 0x2021, 0x0088, 0x2030, 0x0160,
        0x2039, 0x015A, 0x0164, 0x017D, 0x0179, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x0098, 0x2122, 0x0161, 0x203A, 0x015B, 0x0165, 0x017E, 0x017A, 0x00A0,
        0x02C7, 0x02D8, 0x0141, 0x00A4, 0x0104, 0x00A6, 0x00A7, 0x00A8, 0x00A9, 0x015E, 0x00AB,
        0x00AC, 0x00AD, 0x00AE, 0x017B, 0x00B0, 0x00B1, 0x02DB, 0x0142, 0x00B4, 0x00B5, 0x00B6,
        0x00B7, 0x00B8, 0x0105, 0x015F, 0x00BB, 0x013D, 0x02DD, 0x013E, 0x017C, 0x0154, 0x00C1,
        0x00C2, 0x0102, 0x00C4, 0x0139, 0x0106, 0x00C7, 0x010C, 0x00C9, 0x0118, 0x00CB, 0x011A,
        0x00CD, 0x00CE, 0x010E, 0x0110, 0x0143, 0x0147, 0x00D3, 0x00D4, 0x0150, 0x00D6, 0x00D7,
        0x0158, 0x016E, 0x00DA, 0x0170, 0x00DC, 0x00DD, 0x0162, 0x00DF, 0x0155, 0x00E1, 0x00E2,
        0x0103, 0x00E4, 0x013A, 0x0107, 0x00E7, 0x010D, 0x00E9, 0x0119, 0x00EB, 0x011B, 0x00ED,
        0x00EE, 0x010F, 0x0111, 0x0144, 0x0148, 0x00F3, 0x00F4, 0x0151, 0x00F6, 0x00F7, 0x0159,
        0x016F, 0x00FA, 0x0171, 0x00FC, 0x00FD, 0x0163, 0x02D9,
    ];
    /// Bytes 0x80..=0xFF of sloppy-windows-1253 (holes filled with the Latin-1 character of the same number).
    pub const WINDOWS_1253: [u16; 128] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x0088, 0x2030, 0x008A,
        0x2039, 0x008C, 0x008D, 0x008E, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x0098, 0x2122, 0x009A, 0x203A, 0x009C, 0x009D, 0x009E, 0x009F, 0x00A0,
        0x0385, 0x0386, 0x00A3, 0x00A4, 0x00A5, 0x00A6, 0x00A7, 0x00A8, 0x00A9, 0x00AA, 0x00AB,
        0x00AC, 0x00AD, 0x00AE, 0x2015, 0x00B0, 0x00B1, 0x00B2, 0x00B3, 0x0384, 0x00B5, 0x00B6,
        0x00B7, 0x0388, 0x0389, 0x038A, 0x00BB, 0x038C, 0x00BD, 0x038E, 0x038F, 0x0390, 0x0391,
        0x0392, 0x0393, 0x0394, 0x0395, 0x0396, 0x0397, 0x0398, 0x0399, 0x039A, 0x039B, 0x039C,
        0x039D, 0x039E, 0x039F, 0x03A0, 0x03A1, 0x00D2, 0x03A3, 0x03A4, 0x03A5, 0x03A6, 0x03A7,
        0x03A8, 0x03A9, 0x03AA, 0x03AB, 0x03AC, 0x03AD, 0x03AE, 0x03AF, 0x03B0, 0x03B1, 0x03B2,
        0x03B3, 0x03B4, 0x03B5, 0x03B6, 0x03B7, 0x03B8, 0x03B9, 0x03BA, 0x03BB, 0x03BC, 0x03BD,
        0x03BE, 0x03BF, 0x03C0, 0x03C1, 0x03C2, 0x03C3, 0x03C4, 0x03C5, 0x03C6, 0x03C7, 0x03C8,
        0x03C9, 0x03CA, 0x03CB, 0x03CC, 0x03CD, 0x03CE, 0x00FF,
    ];
    /// Bytes 0x80..=0xFF of sloppy-windows-1254 (holes filled with the Latin-1 character of the same number).
    pub const WINDOWS_1254: [u16; 128] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x008E, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x009E, 0x0178, 0x00A0,
        0x00A1, 0x00A2, 0x00A3, 0x00A4, 0x00A5, 0x00A6, 0x00A7, 0x00A8, 0x00A9, 0x00AA, 0x00AB,
        0x00AC, 0x00AD, 0x00AE, 0x00AF, 0x00B0, 0x00B1, 0x00B2, 0x00B3, 0x00B4, 0x00B5, 0x00B6,
        0x00B7, 0x00B8, 0x00B9, 0x00BA, 0x00BB, 0x00BC, 0x00BD, 0x00BE, 0x00BF, 0x00C0, 0x00C1,
        0x00C2, 0x00C3, 0x00C4, 0x00C5, 0x00C6, 0x00C7, 0x00C8, 0x00C9, 0x00CA, 0x00CB, 0x00CC,
        0x00CD, 0x00CE, 0x00CF, 0x011E, 0x00D1, 0x00D2, 0x00D3, 0x00D4, 0x00D5, 0x00D6, 0x00D7,
        0x00D8, 0x00D9, 0x00DA, 0x00DB, 0x00DC, 0x0130, 0x015E, 0x00DF, 0x00E0, 0x00E1, 0x00E2,
        0x00E3, 0x00E4, 0x00E5, 0x00E6, 0x00E7, 0x00E8, 0x00E9, 0x00EA, 0x00EB, 0x00EC, 0x00ED,
        0x00EE, 0x00EF, 0x011F, 0x00F1, 0x00F2, 0x00F3, 0x00F4, 0x00F5, 0x00F6, 0x00F7, 0x00F8,
        0x00F9, 0x00FA, 0x00FB, 0x00FC, 0x0131, 0x015F, 0x00FF,
    ];
    /// Bytes 0x80..=0xFF of sloppy-windows-1257 (holes filled with the Latin-1 character of the same number).
    pub const WINDOWS_1257: [u16; 128] = [
        0x20AC, 0x0081, 0x201A, 0x0083, 0x201E, 0x2026, 0x2020, 0x2021, 0x0088, 0x2030, 0x008A,
        0x2039, 0x008C, 0x00A8, 0x02C7, 0x00B8, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x0098, 0x2122, 0x009A, 0x203A, 0x009C, 0x00AF, 0x02DB, 0x009F, 0x00A0,
        0x00A1, 0x00A2, 0x00A3, 0x00A4, 0x00A5, 0x00A6, 0x00A7, 0x00D8, 0x00A9, 0x0156, 0x00AB,
        0x00AC, 0x00AD, 0x00AE, 0x00C6, 0x00B0, 0x00B1, 0x00B2, 0x00B3, 0x00B4, 0x00B5, 0x00B6,
        0x00B7, 0x00F8, 0x00B9, 0x0157, 0x00BB, 0x00BC, 0x00BD, 0x00BE, 0x00E6, 0x0104, 0x012E,
        0x0100, 0x0106, 0x00C4, 0x00C5, 0x0118, 0x0112, 0x010C, 0x00C9, 0x0179, 0x0116, 0x0122,
        0x0136, 0x012A, 0x013B, 0x0160, 0x0143, 0x0145, 0x00D3, 0x014C, 0x00D5, 0x00D6, 0x00D7,
        0x0172, 0x0141, 0x015A, 0x016A, 0x00DC, 0x017B, 0x017D, 0x00DF, 0x0105, 0x012F, 0x0101,
        0x0107, 0x00E4, 0x00E5, 0x0119, 0x0113, 0x010D, 0x00E9, 0x017A, 0x0117, 0x0123, 0x0137,
        0x012B, 0x013C, 0x0161, 0x0144, 0x0146, 0x00F3, 0x014D, 0x00F5, 0x00F6, 0x00F7, 0x0173,
        0x0142, 0x015B, 0x016B, 0x00FC, 0x017C, 0x017E, 0x02D9,
    ];
    /// Bytes 0x80..=0xFF of iso-8859-2.
    pub const ISO_8859_2: [u16; 128] = [
        0x0080, 0x0081, 0x0082, 0x0083, 0x0084, 0x0085, 0x0086, 0x0087, 0x0088, 0x0089, 0x008A,
        0x008B, 0x008C, 0x008D, 0x008E, 0x008F, 0x0090, 0x0091, 0x0092, 0x0093, 0x0094, 0x0095,
        0x0096, 0x0097, 0x0098, 0x0099, 0x009A, 0x009B, 0x009C, 0x009D, 0x009E, 0x009F, 0x00A0,
        0x0104, 0x02D8, 0x0141, 0x00A4, 0x013D, 0x015A, 0x00A7, 0x00A8, 0x0160, 0x015E, 0x0164,
        0x0179, 0x00AD, 0x017D, 0x017B, 0x00B0, 0x0105, 0x02DB, 0x0142, 0x00B4, 0x013E, 0x015B,
        0x02C7, 0x00B8, 0x0161, 0x015F, 0x0165, 0x017A, 0x02DD, 0x017E, 0x017C, 0x0154, 0x00C1,
        0x00C2, 0x0102, 0x00C4, 0x0139, 0x0106, 0x00C7, 0x010C, 0x00C9, 0x0118, 0x00CB, 0x011A,
        0x00CD, 0x00CE, 0x010E, 0x0110, 0x0143, 0x0147, 0x00D3, 0x00D4, 0x0150, 0x00D6, 0x00D7,
        0x0158, 0x016E, 0x00DA, 0x0170, 0x00DC, 0x00DD, 0x0162, 0x00DF, 0x0155, 0x00E1, 0x00E2,
        0x0103, 0x00E4, 0x013A, 0x0107, 0x00E7, 0x010D, 0x00E9, 0x0119, 0x00EB, 0x011B, 0x00ED,
        0x00EE, 0x010F, 0x0111, 0x0144, 0x0148, 0x00F3, 0x00F4, 0x0151, 0x00F6, 0x00F7, 0x0159,
        0x016F, 0x00FA, 0x0171, 0x00FC, 0x00FD, 0x0163, 0x02D9,
    ];
    /// Bytes 0x80..=0xFF of macroman.
    pub const MAC_ROMAN: [u16; 128] = [
        0x00C4, 0x00C5, 0x00C7, 0x00C9, 0x00D1, 0x00D6, 0x00DC, 0x00E1, 0x00E0, 0x00E2, 0x00E4,
        0x00E3, 0x00E5, 0x00E7, 0x00E9, 0x00E8, 0x00EA, 0x00EB, 0x00ED, 0x00EC, 0x00EE, 0x00EF,
        0x00F1, 0x00F3, 0x00F2, 0x00F4, 0x00F6, 0x00F5, 0x00FA, 0x00F9, 0x00FB, 0x00FC, 0x2020,
        0x00B0, 0x00A2, 0x00A3, 0x00A7, 0x2022, 0x00B6, 0x00DF, 0x00AE, 0x00A9, 0x2122, 0x00B4,
        0x00A8, 0x2260, 0x00C6, 0x00D8, 0x221E, 0x00B1, 0x2264, 0x2265, 0x00A5, 0x00B5, 0x2202,
        0x2211, 0x220F, 0x03C0, 0x222B, 0x00AA, 0x00BA, 0x03A9, 0x00E6, 0x00F8, 0x00BF, 0x00A1,
        0x00AC, 0x221A, 0x0192, 0x2248, 0x2206, 0x00AB, 0x00BB, 0x2026, 0x00A0, 0x00C0, 0x00C3,
        0x00D5, 0x0152, 0x0153, 0x2013, 0x2014, 0x201C, 0x201D, 0x2018, 0x2019, 0x00F7, 0x25CA,
        0x00FF, 0x0178, 0x2044, 0x20AC, 0x2039, 0x203A, 0xFB01, 0xFB02, 0x2021, 0x00B7, 0x201A,
        0x201E, 0x2030, 0x00C2, 0x00CA, 0x00C1, 0x00CB, 0x00C8, 0x00CD, 0x00CE, 0x00CF, 0x00CC,
        0x00D3, 0x00D4, 0xF8FF, 0x00D2, 0x00DA, 0x00DB, 0x00D9, 0x0131, 0x02C6, 0x02DC, 0x00AF,
        0x02D8, 0x02D9, 0x02DA, 0x00B8, 0x02DD, 0x02DB, 0x02C7,
    ];
    /// Bytes 0x80..=0xFF of cp437.
    pub const CP437: [u16; 128] = [
        0x00C7, 0x00FC, 0x00E9, 0x00E2, 0x00E4, 0x00E0, 0x00E5, 0x00E7, 0x00EA, 0x00EB, 0x00E8,
        0x00EF, 0x00EE, 0x00EC, 0x00C4, 0x00C5, 0x00C9, 0x00E6, 0x00C6, 0x00F4, 0x00F6, 0x00F2,
        0x00FB, 0x00F9, 0x00FF, 0x00D6, 0x00DC, 0x00A2, 0x00A3, 0x00A5, 0x20A7, 0x0192, 0x00E1,
        0x00ED, 0x00F3, 0x00FA, 0x00F1, 0x00D1, 0x00AA, 0x00BA, 0x00BF, 0x2310, 0x00AC, 0x00BD,
        0x00BC, 0x00A1, 0x00AB, 0x00BB, 0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x2561, 0x2562,
        0x2556, 0x2555, 0x2563, 0x2551, 0x2557, 0x255D, 0x255C, 0x255B, 0x2510, 0x2514, 0x2534,
        0x252C, 0x251C, 0x2500, 0x253C, 0x255E, 0x255F, 0x255A, 0x2554, 0x2569, 0x2566, 0x2560,
        0x2550, 0x256C, 0x2567, 0x2568, 0x2564, 0x2565, 0x2559, 0x2558, 0x2552, 0x2553, 0x256B,
        0x256A, 0x2518, 0x250C, 0x2588, 0x2584, 0x258C, 0x2590, 0x2580, 0x03B1, 0x00DF, 0x0393,
        0x03C0, 0x03A3, 0x03C3, 0x00B5, 0x03C4, 0x03A6, 0x0398, 0x03A9, 0x03B4, 0x221E, 0x03C6,
        0x03B5, 0x2229, 0x2261, 0x00B1, 0x2265, 0x2264, 0x2320, 0x2321, 0x00F7, 0x2248, 0x00B0,
        0x2219, 0x00B7, 0x221A, 0x207F, 0x00B2, 0x25A0, 0x00A0,
    ];
}
