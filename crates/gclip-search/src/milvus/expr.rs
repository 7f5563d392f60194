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
//! | `f = v`, `f < v` … on a typed field (the partition key, a declared scalar field) | `f == v`, `f < v` … on that field, with `v` as the field's type reads it (below) |
//! | the same on an optional declared field | `(f__present == true and f == v)`, `(f__present == true and f < v)` …; `f != v`: `(f__present == false or f != v)` |
//! | a bare typed field `f` (true, or present and not empty) | `f != ""` (string), `f == true` (bool), every document (number); optional: and `f__present == true` |
//!
//! A typed field holds a copy of the document field of its name, of its type, present in every
//! document (writes refuse others; [`super::scalar`]), or, for an optional field, a placeholder
//! beside a presence field that says the document lacks it: gclip takes a missing field (or
//! null) as matching `!=` and no other comparison, nor a bare field, so a condition on an
//! optional field tests the presence field first. A condition on a typed field reads the typed field
//! wherever that answers as the embedded backend does ([`scalar_condition`]); an equality on the
//! partition key then lets Milvus send the search only to the partitions its value hashes to (it
//! does so for `key == v` and `key in [...]` that every match must satisfy: under `and`, or on
//! both sides of an `or`). On a string field a number or `true`/`false` compared for equality is
//! its text (`tenant = 3` is `tenant == "3"`); a comparison that can match no value of the type
//! (`price = abc` on an `int` field) is a condition no document meets; ranges on a string field
//! against a number read the JSON field as for any field.
//!
//! What has no equivalent is refused by name ([`SearchError::Invalid`]): a bare field other
//! than a typed one (`sold`: true or present; Milvus 2.3 has no `exists` for a key of the JSON
//! field), a range against `true`/`false`, a range on
//! `id` against a number. Comparisons are typed in Milvus where gclip is lenient: a string field
//! holding `"3"` does not equal the number 3, and a range does not look inside a list
//! (docs/MILVUS.md).

use serde_json::Value;

use crate::error::{Result, SearchError};
use crate::filter::{Filter, Op};
use crate::milvus::scalar::{presence_name, ScalarField, ScalarType, MAX_EXACT_INT};

/// The primary key: the document id.
pub(crate) const ID_FIELD: &str = "id";
/// The JSON field that holds a document's fields.
pub(crate) const FIELDS_FIELD: &str = "fields";

/// The Milvus expression for `filter`, or an error naming the construct it cannot express.
pub fn to_milvus_expr(filter: &Filter) -> Result<String> {
    to_milvus_expr_for(filter, &[])
}

/// [`to_milvus_expr`] for a collection with typed fields (its partition key, a VARCHAR, and
/// its declared scalar fields), each a copy of the document field of its name held by every
/// document: conditions on them read the typed field wherever that gives the embedded
/// backend's answers (equalities on the partition key then let Milvus prune partitions).
pub fn to_milvus_expr_for(filter: &Filter, typed: &[ScalarField]) -> Result<String> {
    let mut out = String::new();
    write_expr(filter, typed, &mut out)?;
    Ok(out)
}

/// A condition no document matches: ids are never empty (writes refuse an empty id).
const NEVER: &str = "id == \"\"";
/// A condition every document matches.
const ALWAYS: &str = "id != \"\"";

/// `field op value` on a typed field, with the embedded backend's answers given that every
/// document holds a value of the field's type there (writes refuse others); `None` where that
/// takes the JSON field (a range on a string field against a number, any range against
/// `true`/`false`, which the JSON translation refuses by name).
///
/// The embedded backend's rules (crate::filter): a number equals a string that parses to it; a
/// boolean equals the string `"true"`/`"false"` but not a number; ranges compare numbers with
/// numbers (a string that parses to a number too, when the field holds the string) and strings
/// with strings; anything else matches no comparison (and every `!=`). And it refuses, with
/// these words, a comparison with a kind of value the field never holds (crate::payload's
/// `check_filter`): equality of a numeric field with text that is not a number, a range on a
/// field without numbers (a `bool` field) against a number.
fn scalar_condition(field: &ScalarField, op: Op, value: &Value) -> Result<Option<String>> {
    let name = &field.name;
    let equality = matches!(op, Op::Eq | Op::Ne);
    match (field.ty, value) {
        (ScalarType::Int | ScalarType::Float, Value::String(s))
            if equality && s.parse::<f64>().is_err() =>
        {
            return Err(SearchError::Invalid(format!(
                "filter: `{name}` holds numbers only, and `{s}` is not a number"
            )))
        }
        (ScalarType::Bool, Value::Number(n)) if !equality => {
            return Err(SearchError::Invalid(format!(
                "filter: `{name}` is compared with the number {n}, but no document's `{name}` \
                 is a number"
            )))
        }
        (_, Value::Bool(_)) if !equality => return Ok(None),
        _ => {}
    }
    let no_match = || if op == Op::Ne { ALWAYS } else { NEVER }.to_string();
    let compare = |literal: String| format!("{name} {} {literal}", op_text(op));
    // The value as the embedded backend compares it with a number held by the document.
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if equality => s.parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    };
    Ok(Some(match field.ty {
        ScalarType::String(_) => match value {
            Value::String(s) => compare(string_literal(s)),
            // A number is compared with its text (the embedded backend also takes "3.0" for
            // 3); a boolean equals its text exactly.
            Value::Number(_) | Value::Bool(_) if equality => {
                compare(string_literal(&value.to_string()))
            }
            _ => return Ok(None),
        },
        ScalarType::Float => match number {
            Some(x) => compare(format!("{x:?}")),
            None => no_match(),
        },
        ScalarType::Int => {
            let Some(x) = number else {
                return Ok(Some(no_match()));
            };
            // The field holds integers of magnitude at most 2^53: a fractional bound becomes
            // the integer on the side that keeps the same answers, and one beyond ±2^54 (past
            // every value, exactly representable) becomes ±2^54.
            let max = MAX_EXACT_INT as f64;
            let bound = match op {
                Op::Eq | Op::Ne if x.fract() != 0.0 || x.abs() > max => {
                    return Ok(Some(no_match()))
                }
                Op::Eq | Op::Ne => x,
                Op::Lt | Op::Ge => x.ceil(),
                Op::Le | Op::Gt => x.floor(),
            };
            compare((bound.clamp(-2.0 * max, 2.0 * max) as i64).to_string())
        }
        ScalarType::Bool => match value {
            Value::Bool(b) => compare(b.to_string()),
            _ => no_match(),
        },
    }))
}

/// `condition` (from [`scalar_condition`]) on `field`, answering as the embedded backend does
/// for a document that lacks an optional field (whose column then holds a placeholder): `!=`
/// matches it, every other comparison does not. A condition that matches no document, or
/// every one, already answers so.
fn with_presence(field: &ScalarField, op: Op, condition: String) -> String {
    if !field.optional || condition == NEVER || condition == ALWAYS {
        return condition;
    }
    let present = presence_name(&field.name);
    if op == Op::Ne {
        format!("({present} == false or {condition})")
    } else {
        format!("({present} == true and {condition})")
    }
}

/// The bare field on a typed field, as the embedded backend reads it: a number (0 too) is
/// true, a string when not empty, a boolean when true; a missing field (or null) is false.
fn truthy_condition(field: &ScalarField) -> String {
    let name = &field.name;
    let value = match field.ty {
        ScalarType::String(_) => Some(format!("{name} != \"\"")),
        ScalarType::Int | ScalarType::Float => None,
        ScalarType::Bool => Some(format!("{name} == true")),
    };
    let present = presence_name(name);
    match (field.optional, value) {
        (false, Some(condition)) => condition,
        (false, None) => ALWAYS.to_string(),
        (true, Some(condition)) => format!("({present} == true and {condition})"),
        (true, None) => format!("{present} == true"),
    }
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

fn write_expr(filter: &Filter, typed: &[ScalarField], out: &mut String) -> Result<()> {
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
                write_expr(p, typed, out)?;
            }
            out.push(')');
        }
        Filter::Not(inner) => {
            out.push_str("not (");
            write_expr(inner, typed, out)?;
            out.push(')');
        }
        Filter::Truthy(field) => {
            if let Some(typed) = typed.iter().find(|t| t.name == *field) {
                out.push_str(&truthy_condition(typed));
                return Ok(());
            }
            return Err(unsupported(format!(
                "the bare field `{field}` (true, or present and not empty)"
            )));
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
            if let Some(typed) = typed.iter().find(|t| t.name == *field) {
                if let Some(condition) = scalar_condition(typed, *op, value)? {
                    out.push_str(&with_presence(typed, *op, condition));
                    return Ok(());
                }
            }
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
        let key = [ScalarField {
            name: "tenant".into(),
            ty: ScalarType::String(512),
            optional: false,
        }];
        let with_key = |f: &str| to_milvus_expr_for(&Filter::parse(f).unwrap(), &key);
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
            // Ranges against a string read the string field; against a number, the JSON field
            // (the embedded backend parses the string), as for any field.
            ("tenant > m", r#"tenant > "m""#),
            ("tenant > 3", r#"fields["tenant"] > 3"#),
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

    /// Each typed field's translation, with what the embedded backend answers for the documents
    /// it can hold (every document holds a value of the field's type).
    #[test]
    fn conditions_on_declared_fields_read_their_typed_fields() {
        let typed = crate::milvus::scalar::parse_scalar_fields(
            "brand:string(64),price:int,rating:float,sold:bool",
        )
        .unwrap();
        let typed_expr = |f: &str| to_milvus_expr_for(&Filter::parse(f).unwrap(), &typed).unwrap();
        let (never, always) = (r#"id == """#, r#"id != """#);
        for (f, want) in [
            ("brand = acme", r#"brand == "acme""#),
            ("brand:acme", r#"brand == "acme""#),
            ("brand != acme", r#"brand != "acme""#),
            ("brand >= m", r#"brand >= "m""#),
            ("brand = true", r#"brand == "true""#),
            ("brand = 7", r#"brand == "7""#),
            ("brand < 7", r#"fields["brand"] < 7"#),
            ("price = 12", "price == 12"),
            ("price = '12'", "price == 12"),
            ("price = 12.0", "price == 12"),
            ("price != 12", "price != 12"),
            ("price = 12.5", never),
            ("price != 12.5", always),
            ("price = 'nan'", never),
            ("price = true", never),
            ("price != false", always),
            ("price = 9007199254740992", "price == 9007199254740992"),
            ("price = 9007199254740994", never),
            ("price < 2.5", "price < 3"),
            ("price <= 2.5", "price <= 2"),
            ("price > 2.5", "price > 2"),
            ("price >= 2.5", "price >= 3"),
            ("price >= -2.5", "price >= -2"),
            ("price > 1e300", "price > 18014398509481984"),
            ("price < -1e300", "price < -18014398509481984"),
            // The embedded backend compares a number with a string only for equality.
            ("price < '3'", never),
            ("rating = 4", "rating == 4.0"),
            ("rating = 0.1", "rating == 0.1"),
            ("rating != '4.5'", "rating != 4.5"),
            ("rating >= 4", "rating >= 4.0"),
            ("rating > 1e300", "rating > 1e300"),
            ("rating > x", never),
            ("sold = true", "sold == true"),
            ("sold:false", "sold == false"),
            ("sold != true", "sold != true"),
            ("sold = 'true'", never),
            ("sold != 1", always),
            (
                "brand = acme AND (price < 10 OR NOT sold = true) AND colour = red",
                r#"(brand == "acme" and (price < 10 or not (sold == true)) and (fields["colour"] == "red" or json_contains(fields["colour"], "red")))"#,
            ),
            // Another case is another field.
            (
                "Price = 3",
                r#"(fields["Price"] == 3 or json_contains(fields["Price"], 3))"#,
            ),
        ] {
            assert_eq!(typed_expr(f), want, "{f}");
        }
        // A range against true/false is refused by name, as on any field; comparisons with
        // a kind of value the field never holds in the embedded backend's words.
        for (f, says) in [
            ("sold < true", "range against true/false"),
            ("price >= false", "range against true/false"),
            ("brand > true", "range against true/false"),
            (
                "price = abc",
                "`price` holds numbers only, and `abc` is not a number",
            ),
            (
                "rating != x",
                "`rating` holds numbers only, and `x` is not a number",
            ),
            (
                "sold > 1",
                "`sold` is compared with the number 1, but no document's `sold` is a number",
            ),
        ] {
            let e = to_milvus_expr_for(&Filter::parse(f).unwrap(), &typed).unwrap_err();
            assert!(e.to_string().contains(says), "{f}: {e}");
        }
    }

    /// An optional field's conditions test its presence field so that a document without the
    /// field answers as in the embedded backend: `!=` matches it, nothing else does (a bare
    /// field included).
    #[test]
    fn conditions_on_optional_fields_test_their_presence_fields() {
        let typed = crate::milvus::scalar::parse_scalar_fields(
            "brand:string(64)?,price:int?,rating:float?,sold:bool?,stock:int,code:string",
        )
        .unwrap();
        let typed_expr = |f: &str| to_milvus_expr_for(&Filter::parse(f).unwrap(), &typed).unwrap();
        let (never, always) = (r#"id == """#, r#"id != """#);
        for (f, want) in [
            ("brand = acme", r#"(brand__present == true and brand == "acme")"#),
            ("brand:acme", r#"(brand__present == true and brand == "acme")"#),
            ("brand != acme", r#"(brand__present == false or brand != "acme")"#),
            ("brand = ''", r#"(brand__present == true and brand == "")"#),
            ("brand != ''", r#"(brand__present == false or brand != "")"#),
            ("brand >= m", r#"(brand__present == true and brand >= "m")"#),
            // As for a required field: the JSON field, which a missing key never matches.
            ("brand < 7", r#"fields["brand"] < 7"#),
            ("price = 0", "(price__present == true and price == 0)"),
            ("price != 0", "(price__present == false or price != 0)"),
            ("price < 2.5", "(price__present == true and price < 3)"),
            ("price >= -1", "(price__present == true and price >= -1)"),
            ("price = 12.5", never),
            ("price != 12.5", always),
            ("price < '3'", never),
            ("rating <= 0", "(rating__present == true and rating <= 0.0)"),
            ("rating != '4.5'", "(rating__present == false or rating != 4.5)"),
            ("sold = false", "(sold__present == true and sold == false)"),
            ("sold != true", "(sold__present == false or sold != true)"),
            ("sold = 1", never),
            ("sold != 1", always),
            (
                "NOT price > 3",
                "not ((price__present == true and price > 3))",
            ),
            (
                "NOT (price > 3 OR rating != 1) AND stock = 2",
                "(not (((price__present == true and price > 3) or (rating__present == false or rating != 1.0))) and stock == 2)",
            ),
            // Bare fields: a number is true (0 too), a string when not empty, a boolean when
            // true; missing, never.
            ("price", "price__present == true"),
            ("rating", "rating__present == true"),
            ("brand", r#"(brand__present == true and brand != "")"#),
            ("sold", "(sold__present == true and sold == true)"),
            ("NOT sold", "not ((sold__present == true and sold == true))"),
            ("stock", always),
            ("code", r#"code != """#),
            // A required field reads as before.
            ("stock != 3", "stock != 3"),
        ] {
            assert_eq!(typed_expr(f), want, "{f}");
        }
        // Refused as for a required field.
        for (f, says) in [
            ("sold < true", "range against true/false"),
            (
                "price = abc",
                "`price` holds numbers only, and `abc` is not a number",
            ),
            ("other", "bare field `other`"),
        ] {
            let e = to_milvus_expr_for(&Filter::parse(f).unwrap(), &typed).unwrap_err();
            assert!(e.to_string().contains(says), "{f}: {e}");
        }
        // The partition key's bare field: not empty.
        let key = [ScalarField {
            name: "tenant".into(),
            ty: ScalarType::String(512),
            optional: false,
        }];
        assert_eq!(
            to_milvus_expr_for(&Filter::parse("tenant").unwrap(), &key).unwrap(),
            r#"tenant != """#
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
