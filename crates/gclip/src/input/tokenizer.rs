//! CLIP's byte-level BPE tokenizer, in the open_clip and transformers conventions.
//!
//! Both conventions share the model: UTF-8 bytes are mapped to printable characters, the text is
//! split into words by a regular expression (contractions, runs of letters, single digits, runs of
//! other symbols), each word gets the end-of-word marker `</w>` on its last character, and merges
//! are applied by rank. They differ in everything around it:
//!
//! | | open_clip | transformers (`CLIPTokenizerFast`) |
//! |---|---|---|
//! | cleaning | ftfy `fix_text`, HTML-unescape twice, collapse whitespace, `str.lower` | NFC, `\s+` → space, per-character lowercase |
//! | special tokens in the text | `<start_of_text>`, `<end_of_text>` (case-insensitive) | the added tokens of the directory (`<\|startoftext\|>`, `<\|endoftext\|>`, …) |
//! | sequence | `[SOT] ids [EOT]`, cut to the context length, last id forced to EOT | `[BOS] ids[..n-2] [EOS]` |
//! | padding | 0 | the pad token of the tokenizer config (EOT for OpenAI checkpoints) |
//!
//! Each convention is matched id for id on a corpus of 1,500 strings and on a sweep of every
//! assigned code point (see `tests/fixtures/tokenizer/README.md`). Differences from transformers'
//! *slow* `CLIPTokenizer` (transformers 4.x, which ran ftfy when installed) are listed there;
//! gclip follows the fast one, which is the only one transformers 5 has.
//!
//! ```
//! use gclip::input::tokenizer::ClipTokenizer;
//! let tok = ClipTokenizer::open_clip_default().unwrap();
//! let ids = tok.encode("a photo of a cat");
//! assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
//! assert_eq!(ids.len(), 77);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use regex::Regex;
use serde_json::Value;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::text_clean;

/// The embedded open_clip vocabulary (`bpe_simple_vocab_16e6.txt.gz` from `open_clip_torch`).
pub(crate) static OPEN_CLIP_BPE_GZ: &[u8] =
    include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// Context length of every CLIP text tower.
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;

/// Which reference pipeline the token ids reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenizerConvention {
    /// open_clip's `SimpleTokenizer` (`open_clip.tokenize`), used for open_clip checkpoints.
    OpenClip,
    /// transformers' `CLIPTokenizerFast` with `padding="max_length", truncation=True`, used for
    /// Hugging Face model directories.
    Transformers,
}

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The directory has neither `tokenizer.json` nor `vocab.json` with `merges.txt`.
    #[error(
        "{dir} holds no tokenizer: expected tokenizer.json, or vocab.json and merges.txt \
         (as in a Hugging Face CLIP model directory)"
    )]
    MissingFiles {
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// A JSON file could not be parsed.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A file parsed but does not describe a CLIP BPE vocabulary.
    #[error("{path}: {message}")]
    Malformed {
        /// The file (or the embedded vocabulary's name).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A special token named by the configuration is not in the vocabulary.
    #[error("the {role} token {token:?} is not in the vocabulary of {dir}")]
    MissingToken {
        /// The token text.
        token: String,
        /// `bos`, `eos`, `pad` or `unk`.
        role: &'static str,
        /// The model directory.
        dir: PathBuf,
    },
}

// ---------------------------------------------------------------------------------------------
// Hashing: a small multiplicative hasher for the integer and short-string keys of BPE tables.

#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.write_u64(b as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

// ---------------------------------------------------------------------------------------------
// Byte-level BPE

/// The byte-to-character table of GPT-2 and CLIP: printable Latin-1 bytes stand for themselves,
/// the others (controls, space, DEL, NBSP, soft hyphen) are moved to U+0100 onwards, in order.
/// Returns the 256 characters in vocabulary order (printable bytes first, then the moved ones)
/// together with the byte each stands for.
pub(crate) fn byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, b as char))
        .collect();
    for (next, b) in (256u32..).zip((0..=255u8).filter(|&b| !printable(b))) {
        out.push((b, char::from_u32(next).expect("valid code point")));
    }
    out
}

struct Bpe {
    /// Id of each byte's character, and of that character followed by the end-of-word suffix.
    byte_ids: [Option<u32>; 256],
    byte_end_ids: [Option<u32>; 256],
    /// `(left << 32) | right` to `(rank, merged id)`.
    merges: FastMap<u64, (u32, u32)>,
    unk: Option<u32>,
}

impl Bpe {
    fn new(
        vocab: FastMap<String, u32>,
        merges: &[(String, String)],
        end_of_word: &str,
        unk: Option<u32>,
        path: &Path,
    ) -> Result<Self, TokenizerError> {
        let mut byte_ids = [None; 256];
        let mut byte_end_ids = [None; 256];
        for (b, c) in byte_alphabet() {
            byte_ids[b as usize] = vocab.get(c.to_string().as_str()).copied();
            byte_end_ids[b as usize] = vocab.get(format!("{c}{end_of_word}").as_str()).copied();
        }
        let mut merge_map = FastMap::default();
        merge_map.reserve(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let lookup = |t: &str| {
                vocab
                    .get(t)
                    .copied()
                    .ok_or_else(|| TokenizerError::Malformed {
                        path: path.to_owned(),
                        message: format!(
                            "merge {} ({a:?} {b:?}) uses {t:?}, which is not in the vocabulary",
                            rank + 1
                        ),
                    })
            };
            let left = lookup(a)?;
            let right = lookup(b)?;
            let merged = lookup(&format!("{a}{b}"))?;
            merge_map.insert(((left as u64) << 32) | right as u64, (rank as u32, merged));
        }
        Ok(Bpe {
            byte_ids,
            byte_end_ids,
            merges: merge_map,
            unk,
        })
    }

    /// BPE of one pre-token (its UTF-8 bytes), appending ids to `out`.
    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        let Some((&last, init)) = word.split_last() else {
            return;
        };
        let mut symbols: Vec<u32> = Vec::with_capacity(word.len());
        for &b in init {
            if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                symbols.push(id);
            }
        }
        if let Some(id) = self.byte_end_ids[last as usize].or(self.unk) {
            symbols.push(id);
        }
        if symbols.len() > LONG_WORD {
            self.merge_long(symbols, out);
        } else {
            self.merge_scan(symbols, out);
        }
    }

    /// Merges by repeated scans: find the adjacent pair with the lowest rank, merge all its
    /// occurrences left to right, repeat (open_clip's algorithm; fast for short words).
    fn merge_scan(&self, mut symbols: Vec<u32>, out: &mut Vec<u32>) {
        while symbols.len() > 1 {
            let mut best: Option<(u32, u32, u32, u32)> = None;
            for pair in symbols.windows(2) {
                if let Some(&(rank, merged)) = self
                    .merges
                    .get(&(((pair[0] as u64) << 32) | pair[1] as u64))
                {
                    if best.is_none_or(|(r, ..)| rank < r) {
                        best = Some((rank, pair[0], pair[1], merged));
                    }
                }
            }
            let Some((_, left, right, merged)) = best else {
                break;
            };
            let mut write = 0;
            let mut read = 0;
            while read < symbols.len() {
                if read + 1 < symbols.len() && symbols[read] == left && symbols[read + 1] == right {
                    symbols[write] = merged;
                    read += 2;
                } else {
                    symbols[write] = symbols[read];
                    read += 1;
                }
                write += 1;
            }
            symbols.truncate(write);
        }
        out.extend_from_slice(&symbols);
    }

    /// The same merges for long words in O(n log n): a heap of candidate pairs ordered by
    /// (rank, position) over a linked list of symbols. Popping the lowest rank, leftmost first,
    /// merges the occurrences of a pair left to right as the full scan does (this is how the
    /// `tokenizers` library merges every word).
    fn merge_long(&self, ids: Vec<u32>, out: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const NONE: usize = usize::MAX;
        let n = ids.len();
        let mut id = ids;
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let rank_of = |a: u32, b: u32| self.merges.get(&(((a as u64) << 32) | b as u64)).copied();
        for i in 0..n.saturating_sub(1) {
            if let Some((rank, _)) = rank_of(id[i], id[i + 1]) {
                heap.push(Reverse((rank, i, id[i], id[i + 1])));
            }
        }
        while let Some(Reverse((rank, i, left, right))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == NONE || id[i] != left || id[j] != right {
                continue;
            }
            let Some((r, merged)) = rank_of(left, right) else {
                continue;
            };
            if r != rank {
                continue;
            }
            id[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE {
                if let Some((rank, _)) = rank_of(id[prev[i]], merged) {
                    heap.push(Reverse((rank, prev[i], id[prev[i]], merged)));
                }
            }
            if next[i] != NONE {
                if let Some((rank, _)) = rank_of(merged, id[next[i]]) {
                    heap.push(Reverse((rank, i, merged, id[next[i]])));
                }
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(id[i]);
            i = next[i];
        }
    }
}

/// Words with more symbols than this are merged with a heap instead of repeated scans.
const LONG_WORD: usize = 96;

// ---------------------------------------------------------------------------------------------
// Word cache: per thread, so that `encode_batch` threads never wait on each other.

static NEXT_TOKENIZER_ID: AtomicU64 = AtomicU64::new(1);
const WORD_CACHE_LIMIT: usize = 200_000;

/// Words already encoded on this thread, per tokenizer (a few tokenizers at a time, so that a
/// program alternating between two does not keep emptying the cache).
type WordCache = Vec<(u64, FastMap<Box<[u8]>, Box<[u32]>>)>;
const WORD_CACHE_TOKENIZERS: usize = 4;

thread_local! {
    static WORD_CACHE: RefCell<WordCache> = const { RefCell::new(Vec::new()) };
}

// ---------------------------------------------------------------------------------------------
// Added tokens (transformers convention)

#[derive(Clone, Debug)]
struct AddedToken {
    content: String,
    id: u32,
    /// Matched in the normalised text (after NFC, whitespace and lowercase) rather than the raw.
    normalized: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// Pieces of a text: plain text, or an added token's id.
enum Piece<'a> {
    Text(&'a str),
    Token(u32),
}

/// Splits `text` around the leftmost-longest occurrences of `tokens` (tokenizers' added
/// vocabulary rules, with `lstrip`/`rstrip` taking the neighbouring whitespace along).
fn split_added<'a>(text: &'a str, tokens: &[AddedToken], out: &mut Vec<Piece<'a>>) {
    if tokens.is_empty() {
        out.push(Piece::Text(text));
        return;
    }
    let mut pos = 0; // start of the text not yet emitted
    let mut search = 0;
    while search <= text.len() {
        // Leftmost match, longest on ties.
        let mut best: Option<(usize, &AddedToken)> = None;
        for t in tokens {
            if t.content.is_empty() {
                continue;
            }
            let mut from = search;
            while let Some(i) = text[from..].find(t.content.as_str()) {
                let start = from + i;
                let end = start + t.content.len();
                let ok = !t.single_word || {
                    let before = text[..start].chars().next_back();
                    let after = text[end..].chars().next();
                    !before.is_some_and(char::is_alphanumeric)
                        && !after.is_some_and(char::is_alphanumeric)
                };
                if ok {
                    if best.is_none_or(|(s, b)| {
                        start < s || (start == s && t.content.len() > b.content.len())
                    }) {
                        best = Some((start, t));
                    }
                    break;
                }
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        let Some((start, t)) = best else {
            break;
        };
        let mut begin = start;
        let mut end = start + t.content.len();
        if t.lstrip {
            begin = text[pos..start].trim_end().len() + pos;
        }
        if t.rstrip {
            end = text.len() - text[end..].trim_start().len();
        }
        if begin > pos {
            out.push(Piece::Text(&text[pos..begin]));
        }
        out.push(Piece::Token(t.id));
        pos = end;
        search = end;
    }
    if pos < text.len() {
        out.push(Piece::Text(&text[pos..]));
    }
}

/// The normaliser of `CLIPTokenizerFast`: NFC, every run of whitespace (Unicode `White_Space`)
/// to one space, then each character lowercased on its own (no final-sigma rule).
fn normalize_transformers(text: &str) -> String {
    let nfc: std::borrow::Cow<'_, str> =
        if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
            std::borrow::Cow::Borrowed(text)
        } else {
            std::borrow::Cow::Owned(text.nfc().collect())
        };
    let mut out = String::with_capacity(nfc.len());
    let mut in_space = false;
    for c in nfc.chars() {
        if is_white_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Unicode `White_Space` (what `\s` means in Oniguruma, Rust's `regex` and Python's `regex`).
fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
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

// ---------------------------------------------------------------------------------------------
// The tokenizer

/// CLIP's tokenizer in one of the two reference conventions. `Send + Sync`; share it freely.
pub struct ClipTokenizer {
    id: u64,
    convention: TokenizerConvention,
    bpe: Bpe,
    words: Regex,
    context_length: usize,
    sot: u32,
    eot: u32,
    pad: u32,
    vocab_size: usize,
    /// Special-token literals of the open_clip convention and their ids.
    open_clip_specials: [(&'static str, u32); 2],
    /// Added tokens of the transformers convention matched in the raw text, and those matched in
    /// the normalised text.
    added_raw: Vec<AddedToken>,
    added_normalized: Vec<AddedToken>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("convention", &self.convention)
            .field("vocab_size", &self.vocab_size)
            .field("context_length", &self.context_length)
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .field("pad", &self.pad)
            .finish()
    }
}

/// Where a text may be cut before cleaning so that the ids of the prefix are the first ids of
/// the whole text. The requirement at a cut point `p`: cleaning `text[..p]` gives exactly the
/// beginning of what cleaning the whole text gives, up to a whitespace character that no later
/// step joins across (no regex word, special token, HTML reference, composition or case rule
/// spans whitespace). Then the words, and so the ids, of the prefix are the first words of the
/// whole text, and a prefix that yields `limit` ids decides the output.
enum CutRule {
    /// open_clip (`ftfy.fix_text`, `html.unescape` twice, whitespace collapsed, lowercased).
    /// Either (a) the prefix is plain ASCII in ftfy's sense (printable ASCII, tab, newline, form
    /// feed, no `&`) and ends with one of space, tab, newline or form feed: no ftfy fixer
    /// changes such text, and every fixer that acts on the rest (entities start with `&`,
    /// mojibake with a non-ASCII byte, escapes with ESC) starts after the cut; the separators are
    /// those that HTML reference names cannot contain. Or (b) the prefix ends with a newline
    /// preceded by an ASCII character (or by nothing): ftfy fixes text one line at a time and the
    /// only state carried from line to line (whether to decode entities) depends on earlier
    /// lines only, so the prefix's lines are fixed as in the whole text; and the newline survives
    /// fixing: the only rules that consume a line's final newline (Java's `C0 80` null and
    /// CESU-8, which ftfy matches with a `$` that accepts a final newline) need a non-ASCII
    /// character before it. Lines are cut into segments at a million characters, but a cut
    /// after a newline keeps them too.
    OpenClip { plain_ascii_len: usize },
    /// transformers (added tokens in the raw text, NFC, whitespace collapsed, lowercased): the
    /// prefix ends with ASCII whitespace, which no added token contains (checked: otherwise
    /// [`CutRule::Never`]); NFC neither composes nor reorders across a whitespace character.
    AsciiWhitespace,
    /// No exact cut point: the whole text up to the cap is tokenized.
    Never,
}

impl CutRule {
    fn is_exact(&self, text: &str, p: usize) -> bool {
        let b = text.as_bytes();
        if p == 0 || p > b.len() {
            return false;
        }
        let last = b[p - 1];
        match *self {
            CutRule::OpenClip { plain_ascii_len } => {
                (p <= plain_ascii_len && matches!(last, b' ' | b'\t' | b'\n' | b'\x0c'))
                    || (last == b'\n' && (p == 1 || b[p - 2].is_ascii()))
            }
            CutRule::AsciiWhitespace => last.is_ascii_whitespace() || last == b'\x0b',
            CutRule::Never => false,
        }
    }
}

/// A byte of text that no ftfy rule changes (ftfy's plain ASCII: printable, tab, newline, form
/// feed; not `&`). Matches `text_clean`'s test for whole texts.
fn is_plain_ascii_byte(b: u8) -> bool {
    matches!(b, b' '..=b'~' | b'\t' | b'\n' | b'\x0c') && b != b'&'
}

/// Where a text longer than the cap is cut when no exact cut point was found: after its last
/// ASCII whitespace within `cap` bytes, else at the last character boundary within them.
fn hard_cut(text: &str, cap: usize) -> usize {
    let window = &text.as_bytes()[..cap.min(text.len())];
    if let Some(i) = window.iter().rposition(|b| b.is_ascii_whitespace()) {
        return i + 1;
    }
    let mut end = window.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The word-splitting pattern shared by both conventions, after the special-token literals.
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

impl ClipTokenizer {
    /// open_clip's default tokenizer: the vocabulary shipped inside gclip
    /// (`bpe_simple_vocab_16e6.txt.gz`, 49,408 ids), context length 77, padding 0.
    ///
    /// Building decompresses and indexes the vocabulary (tens of milliseconds): build once, share.
    pub fn open_clip_default() -> Result<Self, TokenizerError> {
        let path = PathBuf::from("<embedded bpe_simple_vocab_16e6.txt.gz>");
        let mut text = String::new();
        flate2::read::GzDecoder::new(OPEN_CLIP_BPE_GZ)
            .read_to_string(&mut text)
            .map_err(|source| TokenizerError::Io {
                path: path.clone(),
                source,
            })?;
        Self::from_open_clip_merges(&text, &path)
    }

    /// open_clip's tokenizer built from the text of a `bpe_simple_vocab_16e6.txt`-style file
    /// (a header line, then one merge per line): the first 48,894 merges, after the 256 byte
    /// characters and the same with `</w>`, then `<start_of_text>` and `<end_of_text>`.
    pub fn from_open_clip_bpe_text(text: &str) -> Result<Self, TokenizerError> {
        Self::from_open_clip_merges(text, Path::new("<bpe text>"))
    }

    fn from_open_clip_merges(text: &str, path: &Path) -> Result<Self, TokenizerError> {
        const MERGES: usize = 49152 - 256 - 2;
        let lines: Vec<&str> = text.split('\n').skip(1).take(MERGES).collect();
        let mut merges = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_owned(), b.to_owned())),
                _ => {
                    return Err(TokenizerError::Malformed {
                        path: path.to_owned(),
                        message: format!("line {} is not a merge of two symbols: {line:?}", i + 2),
                    })
                }
            }
        }
        let mut vocab: FastMap<String, u32> = FastMap::default();
        let mut push = |t: String| {
            let id = vocab.len() as u32;
            vocab.entry(t).or_insert(id);
        };
        let alphabet = byte_alphabet();
        for &(_, c) in &alphabet {
            push(c.to_string());
        }
        for &(_, c) in &alphabet {
            push(format!("{c}</w>"));
        }
        for (a, b) in &merges {
            push(format!("{a}{b}"));
        }
        push("<start_of_text>".to_owned());
        push("<end_of_text>".to_owned());
        let sot = vocab["<start_of_text>"];
        let eot = vocab["<end_of_text>"];
        let vocab_size = vocab.values().map(|&v| v as usize + 1).max().unwrap_or(0);
        let bpe = Bpe::new(vocab, &merges, "</w>", None, path)?;
        // open_clip compiles its pattern case-insensitively. That matters for the contractions
        // (`'S`, and `'ſ` since ſ folds to s) and in one more place: Python's `regex` then leaves
        // U+0345 (a combining mark whose case folding is the letter ι) out of both the letter
        // class and the negated class, so the character is dropped.
        let words = Regex::new(
            r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+"
        )
        .expect("valid regex");
        Ok(ClipTokenizer {
            id: NEXT_TOKENIZER_ID.fetch_add(1, Ordering::Relaxed),
            convention: TokenizerConvention::OpenClip,
            bpe,
            words,
            context_length: DEFAULT_CONTEXT_LENGTH,
            sot,
            eot,
            pad: 0,
            vocab_size,
            open_clip_specials: [("<start_of_text>", sot), ("<end_of_text>", eot)],
            added_raw: Vec::new(),
            added_normalized: Vec::new(),
        })
    }

    /// The tokenizer of a Hugging Face model directory, in the transformers convention.
    ///
    /// Reads `tokenizer.json` (its `model.vocab`, `model.merges` and `added_tokens`) when present,
    /// otherwise `vocab.json` and `merges.txt`; then `tokenizer_config.json` and
    /// `special_tokens_map.json` when present for the bos/eos/pad/unk tokens, the added tokens'
    /// options and `model_max_length` (the context length; 77 when absent or unrealistically
    /// large). Defaults are those of `CLIPTokenizer`: `<|startoftext|>`, `<|endoftext|>` for
    /// eos, pad and unk. Special tokens are matched in the raw text, or in the normalised text
    /// when their `"normalized"` option says so (older `tokenizer.json` files).
    ///
    /// The normaliser and word splitter are always CLIP's, whatever `tokenizer.json` describes:
    /// transformers 5 rebuilds them the same way for every `CLIPTokenizer`.
    ///
    /// Building reads and indexes about 2 MB of JSON (tens of milliseconds): build once, share.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tokenizer_json = dir.join("tokenizer.json");
        let vocab_json = dir.join("vocab.json");
        let merges_txt = dir.join("merges.txt");
        let mut added: Vec<AddedToken> = Vec::new();
        let (vocab, merges, end_of_word, source) = if tokenizer_json.is_file() {
            let json: TokenizerJson = read_json(&tokenizer_json)?;
            let (vocab, merges, eow) = parse_tokenizer_json(json.model, &tokenizer_json)?;
            if let Some(list) = json.added_tokens.as_ref().and_then(Value::as_array) {
                for entry in list {
                    if let Some(t) = added_token_from_json(entry, None) {
                        upsert(&mut added, t);
                    }
                }
            }
            (vocab, merges, eow, tokenizer_json)
        } else if vocab_json.is_file() && merges_txt.is_file() {
            let vocab = read_json::<VocabJson>(&vocab_json)?.into_vocab(&vocab_json)?;
            let text =
                std::fs::read_to_string(&merges_txt).map_err(|source| TokenizerError::Io {
                    path: merges_txt.clone(),
                    source,
                })?;
            let merges = parse_merges_txt(&text, &merges_txt)?;
            (vocab, merges, "</w>".to_owned(), vocab_json)
        } else if !dir.is_dir() {
            return Err(TokenizerError::Io {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        } else {
            return Err(TokenizerError::MissingFiles {
                dir: dir.to_owned(),
            });
        };

        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            Some(read_json::<Value>(&config_path)?)
        } else {
            None
        };
        let map_path = dir.join("special_tokens_map.json");
        let special_map = if map_path.is_file() {
            Some(read_json::<Value>(&map_path)?)
        } else {
            None
        };

        if let Some(decoder) = config
            .as_ref()
            .and_then(|c| c.get("added_tokens_decoder"))
            .and_then(Value::as_object)
        {
            for (id, entry) in decoder {
                if let Some(t) = added_token_from_json(entry, id.parse().ok()) {
                    upsert(&mut added, t);
                }
            }
        }
        let lookup = |content: &str, added: &[AddedToken]| {
            added
                .iter()
                .find(|t| t.content == content)
                .map(|t| t.id)
                .or_else(|| vocab.get(content).copied())
        };
        let special = |role: &'static str,
                       default: &str,
                       added: &mut Vec<AddedToken>|
         -> Result<u32, TokenizerError> {
            let value = config
                .as_ref()
                .and_then(|c| c.get(format!("{role}_token")))
                .filter(|v| !v.is_null())
                .or_else(|| {
                    special_map
                        .as_ref()
                        .and_then(|m| m.get(format!("{role}_token")))
                });
            let (content, flags) = match value {
                Some(Value::String(s)) => (s.clone(), None),
                Some(v @ Value::Object(_)) => match v.get("content").and_then(Value::as_str) {
                    Some(s) => (s.to_owned(), Some(v)),
                    None => (default.to_owned(), None),
                },
                _ => (default.to_owned(), None),
            };
            let id = lookup(&content, added).ok_or_else(|| TokenizerError::MissingToken {
                token: content.clone(),
                role,
                dir: dir.to_owned(),
            })?;
            let existing = added.iter().any(|t| t.content == content);
            match flags {
                Some(v) => {
                    if let Some(t) = added_token_from_json(v, Some(id)) {
                        upsert(added, t);
                    }
                }
                None if !existing => added.push(AddedToken {
                    content,
                    id,
                    normalized: false,
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                }),
                None => {}
            }
            Ok(id)
        };
        let bos = special("bos", "<|startoftext|>", &mut added)?;
        let eos = special("eos", "<|endoftext|>", &mut added)?;
        let unk = special("unk", "<|endoftext|>", &mut added)?;
        let pad = special("pad", "<|endoftext|>", &mut added)?;

        let context_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(Value::as_f64)
            .filter(|n| (1.0..=1e6).contains(n))
            .map_or(DEFAULT_CONTEXT_LENGTH, |n| n as usize);

        let mut vocab_size = vocab.values().map(|&v| v as usize + 1).max().unwrap_or(0);
        vocab_size = vocab_size.max(added.iter().map(|t| t.id as usize + 1).max().unwrap_or(0));
        let bpe = Bpe::new(vocab, &merges, &end_of_word, Some(unk), &source)?;
        let words = Regex::new(&format!(
            r"<\|startoftext\|>|<\|endoftext\|>|{WORD_PATTERN}"
        ))
        .expect("valid regex");
        Ok(ClipTokenizer {
            id: NEXT_TOKENIZER_ID.fetch_add(1, Ordering::Relaxed),
            convention: TokenizerConvention::Transformers,
            bpe,
            words,
            context_length,
            sot: bos,
            eot: eos,
            pad,
            vocab_size,
            open_clip_specials: [("", u32::MAX), ("", u32::MAX)],
            added_raw: added.iter().filter(|t| !t.normalized).cloned().collect(),
            added_normalized: added.into_iter().filter(|t| t.normalized).collect(),
        })
    }

    /// The same tokenizer with another context length (the number of ids [`encode`] returns).
    ///
    /// [`encode`]: ClipTokenizer::encode
    pub fn with_context_length(mut self, n: usize) -> Self {
        self.context_length = n;
        self
    }

    /// The convention these ids follow.
    pub fn convention(&self) -> TokenizerConvention {
        self.convention
    }

    /// Number of ids [`encode`](ClipTokenizer::encode) returns.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Start-of-text id (49406 for CLIP).
    pub fn sot_id(&self) -> u32 {
        self.sot
    }

    /// End-of-text id (49407 for CLIP).
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    /// Padding id: 0 for open_clip, the config's pad token for transformers (49407 for OpenAI).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Number of ids (one more than the largest id).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The ids the text tower receives: exactly [`context_length`](Self::context_length) ids,
    /// start and end tokens included, cut and padded as the convention does.
    ///
    /// With a context length of 1 the result is the end token alone (what open_clip produces),
    /// with 0 it is empty.
    ///
    /// Only a prefix of a long text is cleaned and tokenized (ids beyond the context are cut
    /// anyway): the shortest prefix ending at a cut point where cleaning provably cannot join
    /// what comes before with what comes after that yields enough ids, so the ids are those of
    /// the whole text. A text is never read beyond [`encode_cap`](Self::encode_cap) bytes,
    /// which only matters for texts whose first ids are not within that many bytes at such a
    /// cut point (see [`encode_cap`](Self::encode_cap)).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_measured(text).0
    }

    /// [`encode`](Self::encode), and how many bytes of `text` were cleaned and tokenized.
    pub(crate) fn encode_measured(&self, text: &str) -> (Vec<u32>, usize) {
        let n = self.context_length;
        let mut ids = Vec::with_capacity(n.clamp(2, 4096) + 8);
        ids.push(self.sot);
        let used = self.tokenize_prefix(text, n.saturating_sub(2), &mut ids);
        (self.finish_ids(ids), used)
    }

    /// [`encode`](Self::encode) of the whole text, without any cut: the reference the cut is
    /// tested against.
    #[cfg(test)]
    pub(crate) fn encode_uncut(&self, text: &str) -> Vec<u32> {
        let n = self.context_length;
        let mut ids = vec![self.sot];
        self.tokenize_into(text, n.saturating_sub(2), &mut ids);
        self.finish_ids(ids)
    }

    /// The most bytes of one text that [`encode`](Self::encode) cleans and tokenizes: 1 KiB
    /// per id of context, at least 64 KiB (78,848 bytes at the usual 77). A text is cut there
    /// (at its last ASCII whitespace before the cap, or inside a word when it has none) only
    /// when no exact cut was found before: in practice a single "word" (a run without
    /// whitespace) longer than the cap, or, for the open_clip convention, a line longer than
    /// the cap that is not plain ASCII, where ftfy's decisions that concern a whole line (such
    /// as mojibake repair) then see only the part before the cap. Realistic texts are never cut
    /// there; the cap bounds the time one text can take (ftfy and BPE of megabytes).
    pub fn encode_cap(&self) -> usize {
        self.context_length.max(64).saturating_mul(1024)
    }

    /// Cleans and tokenizes the shortest prefix of `text` that ends at an exact cut point (see
    /// [`exact_cut`](Self::exact_cut)) and yields `limit` ids, appending them to `out`; the ids
    /// are then those of the whole text. Prefixes grow geometrically (each try at least four
    /// times longer), so the work is bounded by a few times the final prefix. Returns the
    /// number of bytes of `text` tokenized.
    fn tokenize_prefix(&self, text: &str, limit: usize, out: &mut Vec<u32>) -> usize {
        let start = out.len();
        let cap = self.encode_cap();
        // Most words of most texts are far shorter than 16 bytes.
        let mut want = limit.saturating_add(1).saturating_mul(16).max(256);
        let cut_ok = self.cut_rule(text, cap);
        loop {
            if text.len() <= want {
                self.tokenize_into(text, limit, out);
                return text.len();
            }
            if want >= cap {
                let end = hard_cut(text, cap);
                self.tokenize_into(&text[..end], limit, out);
                return end;
            }
            if let Some(end) = (want..=cap.min(text.len())).find(|&p| cut_ok.is_exact(text, p)) {
                self.tokenize_into(&text[..end], limit, out);
                if out.len() - start >= limit {
                    return end;
                }
                out.truncate(start);
            }
            want = want.saturating_mul(4).min(cap);
        }
    }

    /// Which positions of `text` (within its first `cap` bytes) are exact cut points.
    fn cut_rule(&self, text: &str, cap: usize) -> CutRule {
        match self.convention {
            TokenizerConvention::OpenClip => {
                let window = &text.as_bytes()[..cap.min(text.len())];
                CutRule::OpenClip {
                    plain_ascii_len: window
                        .iter()
                        .position(|&b| !is_plain_ascii_byte(b))
                        .unwrap_or(window.len()),
                }
            }
            TokenizerConvention::Transformers => {
                let spaced = self
                    .added_raw
                    .iter()
                    .chain(&self.added_normalized)
                    .any(|t| t.content.is_empty() || t.content.chars().any(char::is_whitespace));
                if spaced {
                    CutRule::Never
                } else {
                    CutRule::AsciiWhitespace
                }
            }
        }
    }

    /// Start, end and padding around the ids of the text.
    fn finish_ids(&self, mut ids: Vec<u32>) -> Vec<u32> {
        let n = self.context_length;
        ids.truncate(n.saturating_sub(1).max(1));
        ids.push(self.eot);
        if n == 1 {
            ids.clear();
            ids.push(self.eot);
        }
        ids.resize(n, self.pad);
        ids
    }

    /// [`encode`](Self::encode) for many texts, in parallel (rayon).
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// The BPE ids of the text, without start, end or padding, and not cut.
    pub fn tokenize_unpadded(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.tokenize_into(text, usize::MAX, &mut ids);
        ids
    }

    /// Cleans and tokenizes `text`, appending ids to `out` and stopping once `limit` ids were
    /// added (words are independent, so the ids before the cut are exact).
    fn tokenize_into(&self, text: &str, limit: usize, out: &mut Vec<u32>) {
        let goal = out.len().saturating_add(limit);
        match self.convention {
            TokenizerConvention::OpenClip => {
                let clean = text_clean::clean_open_clip(text);
                self.words_into(&clean, goal, out);
            }
            TokenizerConvention::Transformers => {
                let mut pieces = Vec::new();
                split_added(text, &self.added_raw, &mut pieces);
                for piece in pieces {
                    if out.len() >= goal {
                        break;
                    }
                    match piece {
                        Piece::Token(id) => out.push(id),
                        Piece::Text(t) => {
                            let norm = normalize_transformers(t);
                            let mut inner = Vec::new();
                            split_added(&norm, &self.added_normalized, &mut inner);
                            for p in inner {
                                if out.len() >= goal {
                                    break;
                                }
                                match p {
                                    Piece::Token(id) => out.push(id),
                                    Piece::Text(s) => self.words_into(s, goal, out),
                                }
                            }
                        }
                    }
                }
            }
        }
        out.truncate(goal);
    }

    /// Splits cleaned text into words and BPE-encodes each.
    fn words_into(&self, text: &str, goal: usize, out: &mut Vec<u32>) {
        for m in self.words.find_iter(text) {
            if out.len() >= goal {
                return;
            }
            let word = m.as_str();
            match self.convention {
                TokenizerConvention::OpenClip => {
                    if let Some(&(_, id)) = self.open_clip_specials.iter().find(|(s, _)| *s == word)
                    {
                        out.push(id);
                        continue;
                    }
                    self.bpe_cached(word.as_bytes(), out);
                }
                TokenizerConvention::Transformers => {
                    // A special-token literal that was not taken as an added token (for
                    // example written in capitals): transformers' byte-level step splits it
                    // again with GPT-2's pattern, into `<|`, the name and `|>`.
                    if word == "<|startoftext|>" || word == "<|endoftext|>" {
                        self.bpe_cached(b"<|", out);
                        self.bpe_cached(&word.as_bytes()[2..word.len() - 2], out);
                        self.bpe_cached(b"|>", out);
                        continue;
                    }
                    self.bpe_cached(word.as_bytes(), out);
                }
            }
        }
    }

    fn bpe_cached(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() > 64 {
            self.bpe.encode_word(word, out);
            return;
        }
        WORD_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let slot = match cache.iter().position(|(owner, _)| *owner == self.id) {
                Some(i) => i,
                None => {
                    if cache.len() >= WORD_CACHE_TOKENIZERS {
                        cache.remove(0);
                    }
                    cache.push((self.id, FastMap::default()));
                    cache.len() - 1
                }
            };
            let words = &mut cache[slot].1;
            if let Some(ids) = words.get(word) {
                out.extend_from_slice(ids);
                return;
            }
            let start = out.len();
            self.bpe.encode_word(word, out);
            if words.len() >= WORD_CACHE_LIMIT {
                *words = FastMap::default();
            }
            words.insert(word.into(), out[start..].into());
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face files

/// A vocabulary object (token → id) read straight into the tokenizer's map: the first problem
/// is kept as a message (the rest of the file is still read). A 49,408-entry vocabulary parsed
/// into a `serde_json::Value` first builds an ordered map of owned strings, then copies every
/// key again: a quarter of a bf16 `gclip classify` process.
struct VocabJson(Result<FastMap<String, u32>, String>);

impl<'de> serde::Deserialize<'de> for VocabJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(VocabVisitor)
    }
}

struct VocabVisitor;

const NOT_A_VOCABULARY: &str = "the vocabulary is not a JSON object of token to id";

impl<'de> serde::de::Visitor<'de> for VocabVisitor {
    type Value = VocabJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of token to id")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<VocabJson, A::Error> {
        let mut vocab = FastMap::default();
        vocab.reserve(map.size_hint().unwrap_or(0));
        let mut problem = None;
        while let Some((token, id)) = map.next_entry::<String, Value>()? {
            match id.as_u64().filter(|&i| i < u32::MAX as u64) {
                Some(id) => {
                    vocab.insert(token, id as u32);
                }
                None => {
                    problem.get_or_insert_with(|| {
                        format!("token {token:?} has id {id}, not a non-negative integer")
                    });
                }
            }
        }
        Ok(VocabJson(match problem {
            Some(p) => Err(p),
            None if vocab.is_empty() => Err("the vocabulary is empty".to_owned()),
            None => Ok(vocab),
        }))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<VocabJson, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }

    fn visit_bool<E>(self, _: bool) -> Result<VocabJson, E> {
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }

    fn visit_i64<E>(self, _: i64) -> Result<VocabJson, E> {
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }

    fn visit_u64<E>(self, _: u64) -> Result<VocabJson, E> {
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }

    fn visit_f64<E>(self, _: f64) -> Result<VocabJson, E> {
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }

    fn visit_str<E>(self, _: &str) -> Result<VocabJson, E> {
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<VocabJson, E> {
        Ok(VocabJson(Err(NOT_A_VOCABULARY.to_owned())))
    }
}

impl VocabJson {
    fn into_vocab(self, path: &Path) -> Result<FastMap<String, u32>, TokenizerError> {
        self.0.map_err(|message| TokenizerError::Malformed {
            path: path.to_owned(),
            message,
        })
    }
}

/// The parts of `tokenizer.json` the tokenizer reads; the rest of the file is skipped.
#[derive(serde::Deserialize)]
struct TokenizerJson {
    model: Option<TokenizerJsonModel>,
    added_tokens: Option<Value>,
}

#[derive(serde::Deserialize)]
struct TokenizerJsonModel {
    #[serde(rename = "type")]
    kind: Option<Value>,
    vocab: Option<VocabJson>,
    merges: Option<Value>,
    end_of_word_suffix: Option<Value>,
}

/// Reads a JSON file into `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_owned(),
        source,
    })
}

fn parse_merges_txt(text: &str, path: &Path) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        match line.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                merges.push((a.to_owned(), b.to_owned()))
            }
            _ => {
                return Err(TokenizerError::Malformed {
                    path: path.to_owned(),
                    message: format!("line {} is not a merge of two symbols: {line:?}", i + 1),
                })
            }
        }
    }
    Ok(merges)
}

type ParsedModel = (FastMap<String, u32>, Vec<(String, String)>, String);

fn parse_tokenizer_json(
    model: Option<TokenizerJsonModel>,
    path: &Path,
) -> Result<ParsedModel, TokenizerError> {
    let malformed = |message: &str| TokenizerError::Malformed {
        path: path.to_owned(),
        message: message.to_owned(),
    };
    let model = model.ok_or_else(|| malformed("no \"model\" section"))?;
    if let Some(kind) = model.kind.as_ref().and_then(Value::as_str) {
        if kind != "BPE" {
            return Err(malformed(&format!("the model is {kind}, not BPE")));
        }
    }
    let vocab = model
        .vocab
        .ok_or_else(|| malformed("no \"model.vocab\""))?
        .into_vocab(path)?;
    let list = model
        .merges
        .as_ref()
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no \"model.merges\" list"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let pair = match entry {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())),
            Value::Array(parts) => match parts.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            malformed(&format!(
                "merge {} is neither \"a b\" nor [\"a\", \"b\"]: {entry}",
                i + 1
            ))
        })?);
    }
    let end_of_word = model
        .end_of_word_suffix
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("</w>")
        .to_owned();
    Ok((vocab, merges, end_of_word))
}

fn added_token_from_json(entry: &Value, id: Option<u32>) -> Option<AddedToken> {
    let flag = |name: &str| entry.get(name).and_then(Value::as_bool).unwrap_or(false);
    let id = id.or_else(|| entry.get("id").and_then(Value::as_u64).map(|i| i as u32))?;
    Some(AddedToken {
        content: entry.get("content")?.as_str()?.to_owned(),
        id,
        normalized: flag("normalized"),
        lstrip: flag("lstrip"),
        rstrip: flag("rstrip"),
        single_word: flag("single_word"),
    })
}

fn upsert(added: &mut Vec<AddedToken>, token: AddedToken) {
    match added.iter_mut().find(|t| t.content == token.content) {
        Some(t) => *t = token,
        None => added.push(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_clip_order() {
        let a = byte_alphabet();
        assert_eq!(a.len(), 256);
        assert_eq!(a[0], (b'!', '!'));
        assert_eq!(a[188], (0, '\u{100}'));
        assert_eq!(a.iter().find(|(b, _)| *b == b' ').unwrap().1, '\u{120}');
    }

    #[test]
    fn heap_merge_equals_scan_merge() {
        let tok = ClipTokenizer::open_clip_default().unwrap();
        let mut state = 99u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let alphabet: Vec<char> = "etaoinshrdlucmfwypvbgkjqxzéü日本ßø".chars().collect();
        for _ in 0..300 {
            let len = 1 + next() % 200;
            let word: String = (0..len)
                .map(|_| alphabet[next() % alphabet.len()])
                .collect();
            let bytes = word.as_bytes();
            let (last, init) = bytes.split_last().unwrap();
            let mut symbols: Vec<u32> = init
                .iter()
                .map(|&b| tok.bpe.byte_ids[b as usize].unwrap())
                .collect();
            symbols.push(tok.bpe.byte_end_ids[*last as usize].unwrap());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            tok.bpe.merge_scan(symbols.clone(), &mut a);
            tok.bpe.merge_long(symbols, &mut b);
            assert_eq!(a, b, "{word}");
        }
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<ClipTokenizer>();
    }

    fn hf_fixture() -> ClipTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/hf");
        ClipTokenizer::from_hf_dir(&dir).unwrap()
    }

    /// Texts built from pieces that exercise every cleaning rule near a possible cut: words,
    /// non-ASCII letters, combining marks, HTML references, mojibake, ANSI escapes, control
    /// characters, special tokens, `<`, all kinds of whitespace and long runs without any.
    fn generated_text(next: &mut impl FnMut() -> usize) -> String {
        const PIECES: &[&str] = &[
            "a",
            "photo",
            "of",
            "The",
            "CAT",
            "dog's",
            "don't",
            "42",
            "3.14",
            "x",
            "ΣΑΣ",
            "Σ",
            "naïve",
            "café",
            "e\u{301}",
            "\u{301}",
            "日本語",
            "ß",
            "ﬁne",
            "ＬＯＵＤ",
            "“quoted”",
            "&amp;",
            "&amp;amp;",
            "&eacute;",
            "&EACUTE;",
            "&#x2019;",
            "&#233;",
            "&lt;",
            "&",
            "&nbsp;",
            "&#32;",
            "<b>",
            "<",
            ">",
            "Ã©",
            "â€™",
            "Ã",
            "Ã ",
            "Ã\u{a0}",
            "À",
            "\u{c0}",
            "\u{1b}[31m",
            "\u{1}",
            "\u{7f}",
            "\u{feff}",
            "\u{80}",
            "\u{9d}",
            "<|endoftext|>",
            "<|startoftext|>",
            "<start_of_text>",
            "😀",
            "👍🏽",
            "x\u{200d}y",
            "--",
            "...",
        ];
        const SPACES: &[&str] = &[
            " ", " ", " ", "  ", "\t", "\n", "\n", "\r\n", "\r", "\u{a0}", "\u{3000}", "\u{2028}",
            "\u{85}", "\x0b", "\x0c", "\x1c", "\u{2009}", "",
        ];
        let pieces = 1 + next() % 1500;
        let mut text = String::new();
        for _ in 0..pieces {
            if next().is_multiple_of(40) {
                // A long run without whitespace (shorter than any cap).
                let len = 1 + next() % 3000;
                let unit = PIECES[next() % 20];
                let mut run = String::new();
                while run.len() < len {
                    run.push_str(unit);
                }
                text.push_str(&run);
            } else {
                text.push_str(PIECES[next() % PIECES.len()]);
            }
            text.push_str(SPACES[next() % SPACES.len()]);
        }
        text
    }

    #[test]
    fn cut_text_gives_the_ids_of_the_whole_text() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for tok in [ClipTokenizer::open_clip_default().unwrap(), hf_fixture()] {
            let mut cut = 0;
            for i in 0..250 {
                let text = generated_text(&mut next);
                let (ids, used) = tok.encode_measured(&text);
                assert_eq!(
                    ids,
                    tok.encode_uncut(&text),
                    "{:?} text {i} cut at {used} of {} bytes: {text:?}",
                    tok.convention,
                    text.len()
                );
                cut += usize::from(used < text.len());
            }
            // The comparison means something only if many texts were actually cut.
            assert!(cut > 50, "{:?}: only {cut} texts were cut", tok.convention);
            // Short context lengths cut earlier: the same holds.
            let short = ClipTokenizer {
                context_length: 5,
                ..tok
            };
            for _ in 0..50 {
                let text = generated_text(&mut next);
                assert_eq!(short.encode(&text), short.encode_uncut(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn huge_texts_are_cut_before_cleaning() {
        for tok in [ClipTokenizer::open_clip_default().unwrap(), hf_fixture()] {
            let cap = tok.encode_cap();
            // 10 MiB of words: a few kilobytes are cleaned.
            let words = "a photo of a cat on the mat ".repeat(10 << 20 >> 5);
            let (ids, used) = tok.encode_measured(&words);
            assert!(used <= 4096, "{used} bytes cleaned");
            assert_eq!(ids, tok.encode_uncut(&words[..used]));
            // Non-ASCII words on one line (no exact cut point for open_clip): the cap.
            let line = "naïve café ".repeat(10 << 20 >> 4);
            let (_, used) = tok.encode_measured(&line);
            assert!(used <= cap, "{used} bytes cleaned");
            // The same on lines (ending in ASCII): a few kilobytes.
            let lines = "naïve café au lait\n".repeat(10 << 20 >> 5);
            let (ids, used) = tok.encode_measured(&lines);
            assert!(used <= 4096, "{used} bytes cleaned");
            assert_eq!(ids, tok.encode_uncut(&lines[..used]));
            // One 10 MiB "word": cut at the cap, inside the word.
            let word = "x".repeat(10 << 20);
            let (ids, used) = tok.encode_measured(&word);
            assert_eq!(used, cap);
            assert_eq!(ids.len(), tok.context_length());
        }
    }
}
