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

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;

use crate::document::Fields;
use crate::error::{Result, SearchError};

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Compare {
        field: String,
        op: Op,
        value: Value,
    },
    /// The bare field: true, or present with a value other than false/null/empty.
    Truthy(String),
}

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

fn bad(position: usize, message: impl Into<String>) -> SearchError {
    SearchError::Filter {
        position,
        message: message.into(),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '+' | '@' | '#' | '*')
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>> {
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
}

fn keyword(tok: Option<&Tok>, kw: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }
    fn pos(&self) -> usize {
        self.toks.get(self.at).map(|(p, _)| *p).unwrap_or(self.end)
    }

    fn expr(&mut self, depth: usize) -> Result<Filter> {
        if depth > 64 {
            return Err(bad(self.pos(), "nested too deeply"));
        }
        let mut parts = vec![self.and(depth)?];
        while keyword(self.peek(), "OR") {
            self.at += 1;
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Filter::And(vec![]))
        } else {
            Filter::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Filter> {
        let mut parts = vec![self.unary(depth)?];
        while keyword(self.peek(), "AND") {
            self.at += 1;
            parts.push(self.unary(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Filter::And(vec![]))
        } else {
            Filter::And(parts)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Filter> {
        if keyword(self.peek(), "NOT") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary(depth + 1)?)));
        }
        match self.peek() {
            Some(Tok::LParen) => {
                self.at += 1;
                let inner = self.expr(depth + 1)?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(bad(self.pos(), "expected `)`"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Tok::Word(w)) if !is_keyword(w) => {
                let field = w.clone();
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

    fn value(&mut self) -> Result<Value> {
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
    /// Parses a filter expression.
    pub fn parse(text: &str) -> Result<Filter> {
        let toks = lex(text)?;
        if toks.is_empty() {
            return Err(bad(0, "empty filter"));
        }
        let mut p = Parser {
            toks,
            at: 0,
            end: text.len(),
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
}
