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
//! | `tenant = v`, `tenant != v` on the partition key field | `tenant == "v"`, `tenant != "v"` on that VARCHAR field |
//!
//! The partition key field (a collection's tenant field, when it has one) holds a copy of the
//! document field of its name, a string present in every document; an equality on it reads that
//! field, so that Milvus sends the search only to the partitions its value hashes to (it does so
//! for `key == v` and `key in [...]` that every match must satisfy: under `and`, or on both sides
//! of an `or`). A number or `true`/`false` compared with it is its text (`tenant = 3` is
//! `tenant == "3"`); ranges on it read the JSON field as for any field.
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
    to_milvus_expr_for(filter, None)
}

/// [`to_milvus_expr`] for a collection whose field `partition_key` is its partition key:
/// equalities on that field read the VARCHAR field itself, so that Milvus prunes partitions.
pub fn to_milvus_expr_for(filter: &Filter, partition_key: Option<&str>) -> Result<String> {
    let mut out = String::new();
    write_expr(filter, partition_key, &mut out)?;
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

fn write_expr(filter: &Filter, key: Option<&str>, out: &mut String) -> Result<()> {
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
                write_expr(p, key, out)?;
            }
            out.push(')');
        }
        Filter::Not(inner) => {
            out.push_str("not (");
            write_expr(inner, key, out)?;
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
        Filter::Compare { field, op, value }
            if key == Some(field.as_str()) && matches!(op, Op::Eq | Op::Ne) =>
        {
            // Every document holds a string here (writes refuse any other), so a value that is
            // not a string can only equal its text, and a list never holds it (`:` is `=`).
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                other => return Err(unsupported(format!("the value {other} of `{field}`"))),
            };
            out.push_str(&format!(
                "{field} {} {}",
                op_text(*op),
                string_literal(&text)
            ));
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
    fn equalities_on_the_partition_key_read_its_field() {
        let with_key = |f: &str| to_milvus_expr_for(&Filter::parse(f).unwrap(), Some("tenant"));
        for (f, want) in [
            ("tenant = acme", r#"tenant == "acme""#),
            ("tenant:acme", r#"tenant == "acme""#),
            ("tenant != 'Acme Co'", r#"tenant != "Acme Co""#),
            ("tenant = 3", r#"tenant == "3""#),
            ("tenant = true", r#"tenant == "true""#),
            (
                "tenant = acme AND colour = red",
                r#"(tenant == "acme" and (fields["colour"] == "red" or json_contains(fields["colour"], "red")))"#,
            ),
            (
                "tenant = a OR NOT tenant = b",
                r#"(tenant == "a" or not (tenant == "b"))"#,
            ),
            // Ranges read the JSON field, as for any field.
            ("tenant > m", r#"fields["tenant"] > "m""#),
            // Another field of the same spelling in another case is another field.
            (
                "Tenant = acme",
                r#"(fields["Tenant"] == "acme" or json_contains(fields["Tenant"], "acme"))"#,
            ),
        ] {
            assert_eq!(with_key(f).unwrap(), want, "{f}");
        }
        // Without a partition key, the same filter reads the JSON field.
        assert_eq!(
            expr("tenant = acme").unwrap(),
            r#"(fields["tenant"] == "acme" or json_contains(fields["tenant"], "acme"))"#
        );
        // Quotes in a tenant cannot end the literal.
        assert_eq!(
            with_key(r#"tenant = "a\" or tenant != \"""#).unwrap(),
            r#"tenant == "a\" or tenant != \"""#
        );
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
