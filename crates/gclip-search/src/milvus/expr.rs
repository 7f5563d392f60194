//! gclip filters as Milvus boolean expressions over the collection's schema: the document id is
//! the primary key `id`, every other field a key of the JSON field `fields`.
//!
//! | gclip | Milvus |
//! | --- | --- |
//! | `a AND b`, `a OR b`, `NOT a` | `(a and b)`, `(a or b)`, `not (a)` |
//! | `f = v`, `f:v` | `(fields["f"] == v or json_contains(fields["f"], v))`: a value, or a list holding it |
//! | `f != v` | `not (…)` of the above: a missing field matches, as in gclip |
//! | `f < v` (`<=`, `>`, `>=`) | `fields["f"] < v` |
//! | `id = x` … | `id == "x"` … on the primary key |
//!
//! What has no equivalent is refused by name ([`SearchError::Invalid`]): a bare field (`sold`:
//! true or present; Milvus 2.3 has no `exists`), a range against `true`/`false`, a range on
//! `id` against a number. Comparisons are typed in Milvus where gclip is lenient: a string field
//! holding `"3"` does not equal the number 3, and a range does not look inside a list
//! (docs/MILVUS.md).

use serde_json::Value;

use crate::error::{Result, SearchError};
use crate::filter::{Filter, Op};

/// The primary key: the document id.
pub(crate) const ID_FIELD: &str = "id";
/// The JSON field that holds a document's fields.
pub(crate) const FIELDS_FIELD: &str = "fields";

/// The Milvus expression for `filter`, or an error naming the construct it cannot express.
pub fn to_milvus_expr(filter: &Filter) -> Result<String> {
    let mut out = String::new();
    write_expr(filter, &mut out)?;
    Ok(out)
}

/// A string literal that Milvus' expression parser reads back as `s`.
pub(crate) fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                // \uXXXX for every control character: the parser refuses raw line breaks.
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn unsupported(what: String) -> SearchError {
    SearchError::Invalid(format!(
        "filter: {what} has no equivalent in a Milvus expression; the embedded backend \
         supports it (docs/MILVUS.md lists what translates)"
    ))
}

/// A number as Milvus reads it: integers as integers, other numbers with an exponent when
/// needed (never a long run of digits that would read as an overflowing integer).
fn number_literal(n: &serde_json::Number) -> Option<String> {
    if let Some(i) = n.as_i64() {
        return Some(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.to_string());
    }
    n.as_f64()
        .filter(|f| f.is_finite())
        .map(|f| format!("{f:?}"))
}

fn value_literal(field: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(string_literal(s)),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => {
            number_literal(n).ok_or_else(|| unsupported(format!("the value of `{field}`")))
        }
        other => Err(unsupported(format!("the value {other} of `{field}`"))),
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "==",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

fn write_expr(filter: &Filter, out: &mut String) -> Result<()> {
    match filter {
        Filter::And(parts) | Filter::Or(parts) => {
            let joiner = if matches!(filter, Filter::And(_)) {
                " and "
            } else {
                " or "
            };
            out.push('(');
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    out.push_str(joiner);
                }
                write_expr(p, out)?;
            }
            out.push(')');
        }
        Filter::Not(inner) => {
            out.push_str("not (");
            write_expr(inner, out)?;
            out.push(')');
        }
        Filter::Truthy(field) => {
            return Err(unsupported(format!(
                "the bare field `{field}` (true, or present and not empty)"
            )))
        }
        Filter::Compare { field, op, value } if field == ID_FIELD => {
            // The id is a string: gclip compares a number with its text for equality, which is
            // the string form; a range against a number parses the id, which Milvus cannot.
            let literal = match value {
                Value::String(s) => string_literal(s),
                Value::Number(_) | Value::Bool(_) if matches!(op, Op::Eq | Op::Ne) => {
                    string_literal(&value.to_string())
                }
                _ => {
                    return Err(unsupported(format!(
                        "`id {} {value}` (a range on the id against a number)",
                        op_text(*op)
                    )))
                }
            };
            out.push_str(&format!("{ID_FIELD} {} {literal}", op_text(*op)));
        }
        Filter::Compare { field, op, value } => {
            let key = format!("{FIELDS_FIELD}[{}]", string_literal(field));
            let literal = value_literal(field, value)?;
            match op {
                Op::Eq | Op::Ne => {
                    let equal = format!("({key} == {literal} or json_contains({key}, {literal}))");
                    if *op == Op::Eq {
                        out.push_str(&equal);
                    } else {
                        out.push_str(&format!("not {equal}"));
                    }
                }
                _ if value.is_boolean() => {
                    return Err(unsupported(format!(
                        "`{field} {} {value}` (a range against true/false)",
                        op_text(*op)
                    )))
                }
                _ => out.push_str(&format!("{key} {} {literal}", op_text(*op))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(f: &str) -> Result<String> {
        to_milvus_expr(&Filter::parse(f)?)
    }

    #[test]
    fn every_expressible_construct_translates() {
        for (f, want) in [
            (
                "colour = red",
                r#"(fields["colour"] == "red" or json_contains(fields["colour"], "red"))"#,
            ),
            (
                "tags:summer",
                r#"(fields["tags"] == "summer" or json_contains(fields["tags"], "summer"))"#,
            ),
            (
                "brand != 'Acme Co'",
                r#"not (fields["brand"] == "Acme Co" or json_contains(fields["brand"], "Acme Co"))"#,
            ),
            ("price >= 10", r#"fields["price"] >= 10"#),
            ("price < 2.5", r#"fields["price"] < 2.5"#),
            ("date > '2024-01-01'", r#"fields["date"] > "2024-01-01""#),
            (
                "sold = true",
                r#"(fields["sold"] == true or json_contains(fields["sold"], true))"#,
            ),
            ("id = doc-1", r#"id == "doc-1""#),
            ("id != 7", r#"id != "7""#),
            ("id >= b", r#"id >= "b""#),
            (
                "price > 1 AND (a.b = 2 OR NOT c < 3)",
                r#"(fields["price"] > 1 and ((fields["a.b"] == 2 or json_contains(fields["a.b"], 2)) or not (fields["c"] < 3)))"#,
            ),
        ] {
            assert_eq!(expr(f).unwrap_or_else(|e| panic!("{f}: {e}")), want, "{f}");
        }
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string_literal(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string_literal("line\nbreak"), r#""line\u000abreak""#);
        let e = expr(r#"name = "x\" or id != \"""#).unwrap();
        assert_eq!(
            e,
            r#"(fields["name"] == "x\" or id != \"" or json_contains(fields["name"], "x\" or id != \""))"#
        );
    }

    #[test]
    fn what_has_no_equivalent_is_refused_by_name() {
        for (f, names) in [
            ("sold", "bare field `sold`"),
            ("price > 3 AND NOT sold", "bare field `sold`"),
            ("flag < true", "range against true/false"),
            ("id > 3", "range on the id"),
        ] {
            let e = expr(f).unwrap_err().to_string();
            assert!(e.contains(names), "{f}: {e}");
            assert!(
                e.contains("no equivalent in a Milvus expression"),
                "{f}: {e}"
            );
        }
    }
}
