//! Filters on document fields: `price >= 10 AND (tags:red OR colour = "dark blue") AND NOT sold`.
//!
//! Grammar (keywords case-insensitive):
//! ```text
//! expr    := and ("OR" and)*
//! and     := unary ("AND" unary)*
//! unary   := "NOT" unary | "(" expr ")" | cond
//! cond    := FIELD op VALUE | FIELD ":" VALUE | FIELD            (the last: the field is true/present)
//! op      := "=" | "!=" | "<" | "<=" | ">" | ">="
//! VALUE   := number | "quoted" | 'quoted' | bare-word | true | false
//! ```
//! `=` and `:` match a string, number or boolean equal to the value, or, for a list field (tags),
//! a list holding it. Ranges compare numbers with numbers and strings with strings (so ISO dates
//! work); a missing field matches no comparison except `!=`. `id` names the document id.
//!
//! Filters come from users (a search request, `gclip search --filter`), so parsing is bounded:
//! [`MAX_FILTER_BYTES`] of text, [`MAX_FILTER_DEPTH`] levels of `NOT` and parentheses together,
//! [`MAX_FILTER_CONDITIONS`] conditions and [`MAX_FILTER_CHAIN`] operands in one `AND`/`OR`
//! chain. Each is checked while parsing (the depth before descending), and every [`Filter`]
//! comes from the parser (its variants cannot be built outside this crate), so whatever walks a
//! filter (matching, the payload index, `Debug`, `Drop`) recurses at most about
//! `3 × MAX_FILTER_DEPTH` levels. `NOT NOT x` is parsed as `x`.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use crate::document::Fields;
use crate::error::{Result, SearchError};

/// The longest filter text accepted, in bytes (16 KiB).
pub const MAX_FILTER_BYTES: usize = 16 * 1024;

/// How deeply `NOT`s and parentheses may nest, counted together: `NOT (a OR NOT b)` nests 3 deep.
pub const MAX_FILTER_DEPTH: usize = 64;

/// The most conditions (`field op value`, `field:value`, bare `field`) in one filter.
pub const MAX_FILTER_CONDITIONS: usize = 1024;

/// The most operands in one `AND` chain or one `OR` chain (`a AND b AND c` has 3).
pub const MAX_FILTER_CHAIN: usize = 512;

/// A parsed filter. Only [`Filter::parse`] makes one (the variants cannot be constructed outside
/// this crate), so every filter is within the limits above.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    #[non_exhaustive]
    And(Vec<Filter>),
    #[non_exhaustive]
    Or(Vec<Filter>),
    #[non_exhaustive]
    Not(Box<Filter>),
    #[non_exhaustive]
    Compare { field: String, op: Op, value: Value },
    /// The bare field: true, or present with a value other than false/null/empty.
    #[non_exhaustive]
    Truthy(String),
}

/// The limits a parse runs under: the public constants, or (in tests) other values.
#[derive(Debug, Clone, Copy)]
struct Limits {
    bytes: usize,
    depth: usize,
    conditions: usize,
    chain: usize,
}

const LIMITS: Limits = Limits {
    bytes: MAX_FILTER_BYTES,
    depth: MAX_FILTER_DEPTH,
    conditions: MAX_FILTER_CONDITIONS,
    chain: MAX_FILTER_CHAIN,
};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Op(Op),
    Colon,
    Word(String),
    Quoted(String),
}

/// A parse error: small, so that the parser's frames (one set per nesting level) stay small
/// (`SearchError` is much larger); made a [`SearchError::Filter`] once, at the top.
struct Bad {
    position: usize,
    message: String,
}

type Parsed<T> = std::result::Result<T, Bad>;

fn bad(position: usize, message: impl Into<String>) -> Bad {
    Bad {
        position,
        message: message.into(),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '+' | '@' | '#' | '*')
}

fn lex(text: &str) -> Parsed<Vec<(usize, Tok)>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let next = chars.get(i + 1).map(|&(_, c)| c);
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((pos, Tok::LParen));
                i += 1
            }
            ')' => {
                out.push((pos, Tok::RParen));
                i += 1
            }
            ':' => {
                out.push((pos, Tok::Colon));
                i += 1
            }
            '=' => {
                out.push((pos, Tok::Op(Op::Eq)));
                i += if next == Some('=') { 2 } else { 1 };
            }
            '!' if next == Some('=') => {
                out.push((pos, Tok::Op(Op::Ne)));
                i += 2
            }
            '<' | '>' => {
                let eq = next == Some('=');
                let op = match (c, eq) {
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    _ => Op::Ge,
                };
                out.push((pos, Tok::Op(op)));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let quote = c;
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(bad(pos, "unterminated quoted string")),
                        Some(&(_, '\\')) => {
                            match chars.get(i + 1) {
                                Some(&(_, e)) => s.push(e),
                                None => return Err(bad(pos, "unterminated quoted string")),
                            }
                            i += 2;
                        }
                        Some(&(_, q)) if q == quote => {
                            i += 1;
                            break;
                        }
                        Some(&(_, ch)) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push((pos, Tok::Quoted(s)));
            }
            c if is_word_char(c) => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i].1) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|&(_, c)| c).collect();
                out.push((pos, Tok::Word(word)));
            }
            other => return Err(bad(pos, format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    limits: Limits,
    conditions: usize,
}

fn keyword(tok: Option<&Tok>, kw: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
}

/// `NOT f`, with `NOT NOT x` as `x`.
fn negate(f: Filter) -> Filter {
    match f {
        Filter::Not(inner) => *inner,
        f => Filter::Not(Box::new(f)),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }
    fn pos(&self) -> usize {
        self.toks.get(self.at).map(|(p, _)| *p).unwrap_or(self.end)
    }

    fn too_deep(&self) -> Bad {
        bad(
            self.pos(),
            format!(
                "filter nests deeper than {} (NOT and parentheses)",
                self.limits.depth
            ),
        )
    }

    fn chain_too_long(&self, kw: &str) -> Bad {
        bad(
            self.pos(),
            format!(
                "filter has a chain of more than {} conditions joined by {kw}",
                self.limits.chain
            ),
        )
    }

    /// `depth`: the `NOT`s and parentheses around this expression.
    fn expr(&mut self, depth: usize) -> Parsed<Filter> {
        let mut parts = vec![self.and(depth)?];
        while keyword(self.peek(), "OR") {
            if parts.len() == self.limits.chain {
                return Err(self.chain_too_long("OR"));
            }
            self.at += 1;
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Filter::And(vec![]))
        } else {
            Filter::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Parsed<Filter> {
        let mut parts = vec![self.unary(depth)?];
        while keyword(self.peek(), "AND") {
            if parts.len() == self.limits.chain {
                return Err(self.chain_too_long("AND"));
            }
            self.at += 1;
            parts.push(self.unary(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Filter::And(vec![]))
        } else {
            Filter::And(parts)
        })
    }

    fn unary(&mut self, depth: usize) -> Parsed<Filter> {
        // A run of NOTs is counted in a loop, not by recursion: each one is a level of depth,
        // checked before going on.
        let mut depth = depth;
        let mut negations = 0usize;
        while keyword(self.peek(), "NOT") {
            if depth == self.limits.depth {
                return Err(self.too_deep());
            }
            depth += 1;
            negations += 1;
            self.at += 1;
        }
        let inner = self.operand(depth)?;
        Ok(if negations % 2 == 1 {
            negate(inner)
        } else {
            inner
        })
    }

    fn operand(&mut self, depth: usize) -> Parsed<Filter> {
        match self.peek() {
            Some(Tok::LParen) => {
                if depth == self.limits.depth {
                    return Err(self.too_deep());
                }
                self.at += 1;
                let inner = self.expr(depth + 1)?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(bad(self.pos(), "expected `)`"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Tok::Word(w)) if !is_keyword(w) => {
                if self.conditions == self.limits.conditions {
                    return Err(bad(
                        self.pos(),
                        format!("filter has more than {} conditions", self.limits.conditions),
                    ));
                }
                let field = w.clone();
                self.conditions += 1;
                self.at += 1;
                let op = match self.peek() {
                    Some(Tok::Op(op)) => *op,
                    Some(Tok::Colon) => Op::Eq,
                    _ => return Ok(Filter::Truthy(field)),
                };
                self.at += 1;
                let value = self.value()?;
                Ok(Filter::Compare { field, op, value })
            }
            Some(Tok::Quoted(_)) => Err(bad(self.pos(), "expected a field name, not a string")),
            Some(_) => Err(bad(self.pos(), "expected a field name, `NOT` or `(`")),
            None => Err(bad(self.pos(), "expected a condition, found the end")),
        }
    }

    fn value(&mut self) -> Parsed<Value> {
        let pos = self.pos();
        let v = match self.peek() {
            Some(Tok::Quoted(s)) => Value::String(s.clone()),
            Some(Tok::Word(w)) => word_value(w),
            _ => return Err(bad(pos, "expected a value")),
        };
        self.at += 1;
        Ok(v)
    }
}

fn is_keyword(w: &str) -> bool {
    ["AND", "OR", "NOT"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

fn word_value(w: &str) -> Value {
    if w == "true" {
        return Value::Bool(true);
    }
    if w == "false" {
        return Value::Bool(false);
    }
    if let Ok(i) = w.parse::<i64>() {
        return Value::from(i);
    }
    match w.parse::<f64>() {
        Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(w.into())),
        _ => Value::String(w.into()),
    }
}

impl Filter {
    /// Parses a filter expression. Text beyond [`MAX_FILTER_BYTES`], nesting beyond
    /// [`MAX_FILTER_DEPTH`], more than [`MAX_FILTER_CONDITIONS`] conditions or a chain longer
    /// than [`MAX_FILTER_CHAIN`] are [`SearchError::Filter`] errors naming the limit.
    pub fn parse(text: &str) -> Result<Filter> {
        Self::parse_limited(text, LIMITS)
    }

    fn parse_limited(text: &str, limits: Limits) -> Result<Filter> {
        Self::parse_bounded(text, limits).map_err(|b| SearchError::Filter {
            position: b.position,
            message: b.message,
        })
    }

    fn parse_bounded(text: &str, limits: Limits) -> Parsed<Filter> {
        if text.len() > limits.bytes {
            return Err(bad(
                limits.bytes,
                format!(
                    "filter is {} bytes long, more than the limit of {}",
                    text.len(),
                    limits.bytes
                ),
            ));
        }
        let toks = lex(text)?;
        if toks.is_empty() {
            return Err(bad(0, "empty filter"));
        }
        let mut p = Parser {
            toks,
            at: 0,
            end: text.len(),
            limits,
            conditions: 0,
        };
        let f = p.expr(0)?;
        if p.at < p.toks.len() {
            return Err(bad(p.pos(), "expected `AND`, `OR` or the end"));
        }
        Ok(f)
    }

    /// Whether a document matches.
    pub fn matches(&self, id: &str, fields: &Fields) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|f| f.matches(id, fields)),
            Filter::Or(parts) => parts.iter().any(|f| f.matches(id, fields)),
            Filter::Not(inner) => !inner.matches(id, fields),
            Filter::Truthy(field) => match lookup(id, fields, field).as_deref() {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::String(s)) => !s.is_empty(),
                Some(Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            },
            Filter::Compare { field, op, value } => {
                let Some(have) = lookup(id, fields, field) else {
                    return *op == Op::Ne;
                };
                match op {
                    Op::Eq => equals(&have, value),
                    Op::Ne => !equals(&have, value),
                    _ => {
                        let test = |ord: Ordering| match op {
                            Op::Lt => ord == Ordering::Less,
                            Op::Le => ord != Ordering::Greater,
                            Op::Gt => ord == Ordering::Greater,
                            _ => ord != Ordering::Less,
                        };
                        match have.as_ref() {
                            Value::Array(items) => {
                                items.iter().any(|h| compare(h, value).is_some_and(test))
                            }
                            h => compare(h, value).is_some_and(test),
                        }
                    }
                }
            }
        }
    }
}

/// Borrowed: a filter runs once per candidate document, so it must not copy field values.
fn lookup<'a>(id: &str, fields: &'a Fields, name: &str) -> Option<Cow<'a, Value>> {
    match fields.get(name) {
        Some(v) => Some(Cow::Borrowed(v)),
        None if name == "id" => Some(Cow::Owned(Value::String(id.to_string()))),
        None => None,
    }
}

fn scalar_equals(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a == b,
        // A bare word that looks like a number still matches a string field holding it.
        (Value::String(a), Value::Number(b)) => a.parse::<f64>().ok() == b.as_f64(),
        (Value::Number(a), Value::String(b)) => b.parse::<f64>().ok() == a.as_f64(),
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::String(a), Value::Bool(b)) => a == &b.to_string(),
        _ => false,
    }
}

fn equals(have: &Value, want: &Value) -> bool {
    match have {
        Value::Array(items) => items.iter().any(|h| scalar_equals(h, want)),
        h => scalar_equals(h, want),
    }
}

fn compare(have: &Value, want: &Value) -> Option<Ordering> {
    match (have, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (Value::String(a), Value::Number(b)) => a.parse::<f64>().ok()?.partial_cmp(&b.as_f64()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Fields {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn equality_ranges_tags_and_logic() {
        let a = doc(
            json!({"price": 12.5, "tags": ["red", "summer"], "brand": "Acme Co", "sold": false, "date": "2024-05-01"}),
        );
        let b = doc(json!({"price": 40, "tags": ["blue"], "brand": "Other", "sold": true}));
        let cases = [
            ("price >= 10 AND price < 20", true, false),
            ("tags:red", true, false),
            ("tags = blue OR brand = \"Acme Co\"", true, true),
            ("NOT tags:red", false, true),
            ("sold", false, true),
            ("NOT (sold OR price > 100)", true, false),
            ("brand != Other", true, false),
            ("date >= '2024-01-01'", true, false),
            ("missing = 3", false, false),
            ("missing != 3", true, true),
            ("id = doc-a", true, false),
            ("price = 40", false, true),
            ("price > 20 and not sold or tags:summer", true, false),
        ];
        for (f, want_a, want_b) in cases {
            let parsed = Filter::parse(f).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(parsed.matches("doc-a", &a), want_a, "{f} on a");
            assert_eq!(parsed.matches("doc-b", &b), want_b, "{f} on b");
        }
    }

    #[test]
    fn bad_filters_are_errors_with_positions() {
        for (f, pos) in [
            ("price >", 7),
            ("(a = 1", 6),
            ("a = 1 b = 2", 6),
            ("", 0),
            ("a = 'x", 4),
            ("AND a", 0),
            ("a = 1 OR", 8),
            ("a ~ 1", 2),
        ] {
            match Filter::parse(f) {
                Err(SearchError::Filter { position, .. }) => assert_eq!(position, pos, "{f}"),
                other => panic!("{f}: expected a filter error, got {other:?}"),
            }
        }
        let deep = "(".repeat(200) + "a" + &")".repeat(200);
        assert!(Filter::parse(&deep).is_err());
    }

    /// Runs `f` on a thread with a 512 KiB stack (a quarter of a default thread's): parsing and
    /// dropping must not need more. Runs of NOTs take no stack per NOT; each level of
    /// parentheses takes a few frames, and 64 levels in an unoptimised (test) build need more
    /// than 256 KiB.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("the parser overflowed or panicked on a small stack")
    }

    fn message(r: Result<Filter>) -> String {
        match r {
            Err(SearchError::Filter { message, .. }) => message,
            other => panic!("expected a filter error, got {other:?}"),
        }
    }

    #[test]
    fn chained_nots_are_an_error_not_a_crash() {
        let results = on_small_stack(|| {
            let mut out = Vec::new();
            for n in [6_000, 100_000] {
                let text = "NOT ".repeat(n) + "a";
                // At the public limits the text is too long before anything else is read.
                out.push(message(Filter::parse(&text)));
                // Without the length limit, the depth limit fires while reading the NOTs.
                let no_length = Limits {
                    bytes: usize::MAX,
                    ..LIMITS
                };
                out.push(message(Filter::parse_limited(&text, no_length)));
            }
            // Within the length limit.
            out.push(message(Filter::parse(&("NOT ".repeat(4000) + "a"))));
            out
        });
        assert!(
            results[0].contains("more than the limit of 16384"),
            "{}",
            results[0]
        );
        assert!(
            results[2].contains("more than the limit of 16384"),
            "{}",
            results[2]
        );
        for m in [&results[1], &results[3], &results[4]] {
            assert_eq!(m, "filter nests deeper than 64 (NOT and parentheses)");
        }
    }

    #[test]
    fn a_million_nots_parse_without_recursion_when_the_limits_are_lifted() {
        // Counting NOTs is a loop: even far beyond the default depth, nothing recurses.
        let lifted = Limits {
            bytes: usize::MAX,
            depth: usize::MAX,
            ..LIMITS
        };
        let (even, odd) = on_small_stack(move || {
            let even = Filter::parse_limited(&("NOT ".repeat(1_000_000) + "a"), lifted);
            let odd = Filter::parse_limited(&("not ".repeat(999_999) + "a"), lifted);
            (even, odd)
        });
        assert_eq!(even.unwrap(), Filter::Truthy("a".into()));
        assert_eq!(
            odd.unwrap(),
            Filter::Not(Box::new(Filter::Truthy("a".into())))
        );
    }

    #[test]
    fn depth_counts_nots_and_parentheses_together() {
        let (ok, too_deep, mixed_ok, mixed_deep) = on_small_stack(|| {
            let parens = |n: usize| "(".repeat(n) + "a = 1" + &")".repeat(n);
            let mixed = |n: usize| "NOT (".repeat(n) + "a" + &")".repeat(n);
            (
                Filter::parse(&parens(64)),
                Filter::parse(&parens(65)),
                Filter::parse(&mixed(32)),
                Filter::parse(&mixed(33)),
            )
        });
        let doc = doc(json!({"a": 1}));
        assert!(ok.unwrap().matches("x", &doc));
        assert_eq!(
            message(too_deep),
            "filter nests deeper than 64 (NOT and parentheses)"
        );
        // 32 NOTs: an even number, so the filter is `a`.
        assert!(mixed_ok.unwrap().matches("x", &doc));
        assert!(message(mixed_deep).contains("deeper than 64"));
        // 64 NOTs in a row are fine, 65 are not.
        assert!(Filter::parse(&("NOT ".repeat(64) + "a")).is_ok());
        assert!(message(Filter::parse(&("NOT ".repeat(65) + "a"))).contains("deeper than 64"));
    }

    #[test]
    fn double_negation_collapses() {
        let a = Filter::parse("a = 1").unwrap();
        assert_eq!(Filter::parse("NOT NOT a = 1").unwrap(), a);
        assert_eq!(Filter::parse("NOT (NOT (a = 1))").unwrap(), a);
        assert_eq!(
            Filter::parse("NOT NOT NOT a = 1").unwrap(),
            Filter::Not(Box::new(a))
        );
    }

    #[test]
    fn long_chains_and_many_conditions_are_errors_naming_the_limit() {
        let chain = |n: usize, kw: &str| vec!["a = 1"; n].join(&format!(" {kw} "));
        // 10,000 conditions do not fit in 16 KiB.
        assert!(message(Filter::parse(&chain(10_000, "AND"))).contains("limit of 16384"));
        let lifted = Limits {
            bytes: usize::MAX,
            ..LIMITS
        };
        assert_eq!(
            message(Filter::parse_limited(&chain(10_000, "AND"), lifted)),
            "filter has a chain of more than 512 conditions joined by AND"
        );
        // At the chain limit: fine; one more: an error.
        let doc = doc(json!({"a": 1}));
        assert!(Filter::parse(&chain(512, "AND"))
            .unwrap()
            .matches("x", &doc));
        assert!(Filter::parse(&chain(512, "OR")).unwrap().matches("x", &doc));
        assert_eq!(
            message(Filter::parse(&chain(513, "OR"))),
            "filter has a chain of more than 512 conditions joined by OR"
        );
        // Chains inside parentheses: each within the chain limit, 1024 conditions in all.
        let two = |n: usize| format!("({}) AND ({})", chain(512, "OR"), chain(n, "OR"));
        let at_limit = two(512);
        assert!(at_limit.len() <= MAX_FILTER_BYTES);
        assert!(Filter::parse(&at_limit).unwrap().matches("x", &doc));
        assert_eq!(
            message(Filter::parse(&two(513))),
            "filter has a chain of more than 512 conditions joined by OR"
        );
        let over = format!("{} AND b", two(512));
        assert_eq!(
            message(Filter::parse(&over)),
            "filter has more than 1024 conditions"
        );
    }

    #[test]
    fn a_filter_at_every_limit_at_once_parses_and_matches() {
        // 64 levels of nesting around a 512-condition OR, 1024 conditions, up to 16 KiB.
        let inner = vec!["b:x"; 511].join(" OR ") + " OR a = 1";
        let nested = "NOT NOT (".repeat(21) + "(" + &inner + ")" + &")".repeat(21);
        let text = format!("{nested} AND ({})", vec!["c != 2"; 512].join(" AND "));
        assert!(text.len() <= MAX_FILTER_BYTES, "{}", text.len());
        let f = on_small_stack(move || Filter::parse(&text)).unwrap();
        assert!(f.matches("x", &doc(json!({"a": 1}))));
        assert!(!f.matches("x", &doc(json!({"a": 2}))));
        assert!(!f.matches("x", &doc(json!({"a": 1, "c": 2}))));
        // Exactly 16 KiB of text is accepted, one byte more is not.
        let pad = |n: usize| format!("a = '{}'", "x".repeat(n - 6));
        assert!(Filter::parse(&pad(MAX_FILTER_BYTES)).is_ok());
        assert!(message(Filter::parse(&pad(MAX_FILTER_BYTES + 1))).contains("16385 bytes"));
    }
}
