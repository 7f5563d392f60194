//! Typed scalar fields of a Milvus collection: copies of document fields that filters read as
//! Milvus fields (which Milvus can index) instead of keys of the `fields` JSON field.
//!
//! Two kinds, both declared when gclip creates the collection and fixed then:
//! - the partition key (`GCLIP_MILVUS_PARTITION_KEY`), a VARCHAR of at most
//!   [`super::MAX_TENANT_BYTES`] that names each document's tenant;
//! - the declared filterable fields (`GCLIP_MILVUS_SCALAR_FIELDS=price:int,brand:string(64)`),
//!   each a VARCHAR, INT64, DOUBLE or BOOL.
//!
//! Milvus 2.3's scalar fields are typed and cannot be null, so every document must hold each
//! such field with a value of its type; a document that does not is refused alone, by id and
//! field ([`ScalarField::value_in`]). A field declared optional (`rating:float?`) may be missing
//! (or null, which gclip's filters treat as missing): the document then holds a placeholder
//! there, the zero of the type, and `false` in the field's presence field, a BOOL named
//! [`presence_name`], which filters test so that a missing field answers as in the embedded
//! backend. The document's `fields` JSON keeps the value too: reads never look at the copies.

use serde_json::Value as Json;

use milvus::proto::schema::DataType;
use milvus::value::ValueVec;

use super::address::is_identifier;
use crate::document::Fields;

/// The environment variable that declares the scalar fields of a collection gclip creates.
pub const SCALAR_FIELDS_VAR: &str = "GCLIP_MILVUS_SCALAR_FIELDS";
/// The most Milvus fields the declared scalar fields take, an optional one counting twice (its
/// presence field). Milvus 2.3 allows 64 fields in a collection (`proxy.maxFieldNum`), and
/// gclip's own and a partition key take 5.
pub const MAX_SCALAR_FIELDS: usize = 32;
/// The end of a presence field's name: the name of the optional field, then this. Names that end
/// so cannot be declared ([`check_field_name`]), so a presence field never meets a user's field.
pub const PRESENCE_SUFFIX: &str = "__present";
/// The longest field name (partition key or scalar field).
pub const MAX_FIELD_NAME: usize = 64;
/// The `max_length` of a `string` field declared without one, in bytes.
pub const DEFAULT_STRING_BYTES: u32 = 256;
/// The largest `max_length` of a `string(N)` field, in bytes (Milvus' VARCHAR limit).
pub const MAX_STRING_BYTES: u32 = 65_535;
/// The largest magnitude of an `int` field's value: 2^53, which an f64 holds exactly (the
/// embedded backend compares numbers as f64, so larger integers would compare differently).
pub const MAX_EXACT_INT: i64 = 1 << 53;

/// The type of a scalar field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    /// VARCHAR of at most this many bytes (`string`, `string(N)`).
    String(u32),
    /// INT64 holding whole numbers of magnitude at most [`MAX_EXACT_INT`] (`int`).
    Int,
    /// DOUBLE (`float`).
    Float,
    /// BOOL (`bool`).
    Bool,
}

impl ScalarType {
    /// What a value of this type is, for errors.
    fn wanted(self) -> String {
        match self {
            Self::String(_) => "a string".into(),
            Self::Int => format!(
                "a whole number (no fraction or exponent) of magnitude at most 2^53 \
                 ({MAX_EXACT_INT})"
            ),
            Self::Float => "a number".into(),
            Self::Bool => "true or false".into(),
        }
    }
}

impl std::fmt::Display for ScalarType {
    /// As declared: `string(N)`, `int`, `float`, `bool`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String(n) => write!(f, "string({n})"),
            Self::Int => f.write_str("int"),
            Self::Float => f.write_str("float"),
            Self::Bool => f.write_str("bool"),
        }
    }
}

/// A document field with a typed Milvus field of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalarField {
    pub name: String,
    pub ty: ScalarType,
    /// Documents may lack the field (declared `name:type?`); the collection then has its
    /// presence field too ([`presence_name`]).
    pub optional: bool,
}

impl std::fmt::Display for ScalarField {
    /// As declared: `name:type`, `name:type?` when optional.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let optional = if self.optional { "?" } else { "" };
        write!(f, "{}:{}{optional}", self.name, self.ty)
    }
}

/// The name of the BOOL field that says whether a document holds the optional field `name`.
pub fn presence_name(name: &str) -> String {
    format!("{name}{PRESENCE_SUFFIX}")
}

/// A value of a scalar field, as written to its column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ScalarValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Why `name` cannot name a typed field (`what`: "a partition key", "a scalar field"), if it
/// cannot: it must be 1 to [`MAX_FIELD_NAME`] ASCII letters, digits and `_`, not starting with a
/// digit (a Milvus field name that reads as itself in an expression), and neither one of gclip's
/// own fields (`id`, `vector`, `fields`, `source`) nor a word of Milvus' expression language
/// (`and`, `in`, `like`, `json_contains`, ...), in any case, nor ending in [`PRESENCE_SUFFIX`]
/// (in any case: gclip's presence fields).
pub(crate) fn check_field_name(name: &str, what: &str) -> Result<(), String> {
    if !is_identifier(name, MAX_FIELD_NAME) {
        return Err(format!(
            "{what} is a field name of 1 to {MAX_FIELD_NAME} ASCII letters, digits and `_`, not \
             starting with a digit"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if ["id", "vector", "fields", "source"].contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` is one of gclip's own fields in a Milvus collection (id, vector, fields, \
             source); {what} names a document field"
        ));
    }
    let keyword = ["and", "or", "not", "in", "like", "exists", "true", "false"]
        .contains(&lower.as_str())
        || lower.starts_with("json_")
        || lower.starts_with("array_");
    if keyword {
        return Err(format!(
            "`{name}` is a word of Milvus' expression language, which cannot name a field there"
        ));
    }
    if lower.ends_with(PRESENCE_SUFFIX) {
        return Err(format!(
            "`{name}` ends in `{PRESENCE_SUFFIX}`, which gclip keeps for the presence fields of \
             optional scalar fields"
        ));
    }
    Ok(())
}

/// Reads a declaration: `name:type` entries separated by commas, types `string` (at most
/// [`DEFAULT_STRING_BYTES`] bytes), `string(N)` (N from 1 to [`MAX_STRING_BYTES`]), `int`,
/// `float` and `bool`, each optional when followed by `?` (`rating:float?`); fields taking at
/// most [`MAX_SCALAR_FIELDS`] Milvus fields (an optional one two), names as for a partition key
/// ([`super::check_partition_key_name`]: 1 to [`super::MAX_PARTITION_KEY_NAME`] ASCII
/// letters, digits and `_`, not starting with a digit, neither gclip's own fields nor words of
/// Milvus' expression language), each once (in any case). Blank is no field.
pub fn parse_scalar_fields(spec: &str) -> Result<Vec<ScalarField>, String> {
    let mut out: Vec<ScalarField> = Vec::new();
    if spec.trim().is_empty() {
        return Ok(out);
    }
    for entry in spec.split(',') {
        let entry = entry.trim();
        let Some((name, ty)) = entry.split_once(':') else {
            return Err(format!(
                "{:?} is not name:type or name:type? (types: string, string(N), int, float, \
                 bool)",
                shorten(entry)
            ));
        };
        let (name, ty) = (name.trim(), ty.trim());
        let (ty, optional) = match ty.strip_suffix('?') {
            Some(ty) => (ty.trim_end(), true),
            None => (ty, false),
        };
        let ty = parse_type(ty).map_err(|why| format!("{}: {why}", shorten(name)))?;
        out.push(ScalarField {
            name: name.to_string(),
            ty,
            optional,
        });
    }
    check_declared(&out)?;
    Ok(out)
}

/// Why these fields cannot be declared together, if they cannot: more than
/// [`MAX_SCALAR_FIELDS`] Milvus fields (an optional field takes two), a name
/// [`check_field_name`] refuses, a name twice (in any case), a string length outside 1 to
/// [`MAX_STRING_BYTES`].
pub(crate) fn check_declared(fields: &[ScalarField]) -> Result<(), String> {
    let optional = fields.iter().filter(|f| f.optional).count();
    let taken = fields.len() + optional;
    if taken > MAX_SCALAR_FIELDS {
        let why = if optional == 0 {
            format!("{} fields, more than {MAX_SCALAR_FIELDS}", fields.len())
        } else {
            format!(
                "{} fields, {optional} of them optional (each with a presence field): {taken} \
                 Milvus fields, more than {MAX_SCALAR_FIELDS}",
                fields.len()
            )
        };
        return Err(format!("{why}; declare the fields filters use most"));
    }
    for (i, f) in fields.iter().enumerate() {
        check_field_name(&f.name, "a scalar field")
            .map_err(|why| format!("{:?}: {why}", shorten(&f.name)))?;
        if let Some(twin) = fields[..i]
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&f.name))
        {
            return Err(format!("{} is declared twice (as {twin} already)", f.name));
        }
        if let ScalarType::String(n) = f.ty {
            if !(1..=MAX_STRING_BYTES).contains(&n) {
                return Err(format!(
                    "{f}: the length is a whole number of bytes from 1 to {MAX_STRING_BYTES}"
                ));
            }
        }
    }
    Ok(())
}

fn parse_type(ty: &str) -> Result<ScalarType, String> {
    let lower = ty.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "string" => ScalarType::String(DEFAULT_STRING_BYTES),
        "int" => ScalarType::Int,
        "float" => ScalarType::Float,
        "bool" => ScalarType::Bool,
        _ => {
            let n = lower
                .strip_prefix("string(")
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(|| {
                    format!(
                        "unknown type {:?}: give string, string(N), int, float or bool",
                        shorten(ty)
                    )
                })?;
            match n.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_STRING_BYTES).contains(&n) => ScalarType::String(n),
                _ => {
                    return Err(format!(
                        "string({}): the length is a whole number of bytes from 1 to \
                         {MAX_STRING_BYTES}",
                        shorten(n)
                    ))
                }
            }
        }
    })
}

/// At most 72 characters of a user's text, for errors.
fn shorten(s: &str) -> String {
    let shown: String = s.chars().take(72).collect();
    if shown.len() < s.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

impl ScalarField {
    /// The field a collection's schema declares, if it is one gclip makes: a name
    /// [`check_field_name`] takes, and VARCHAR (with its `max_length`), INT64, DOUBLE or BOOL.
    pub(crate) fn from_schema(f: &milvus::proto::schema::FieldSchema) -> Option<Self> {
        check_field_name(&f.name, "a scalar field").ok()?;
        let ty = match DataType::try_from(f.data_type).ok()? {
            DataType::VarChar => {
                let max = f
                    .type_params
                    .iter()
                    .find(|p| p.key == "max_length")?
                    .value
                    .parse::<u32>()
                    .ok()?;
                ScalarType::String(max)
            }
            DataType::Int64 => ScalarType::Int,
            DataType::Double => ScalarType::Float,
            DataType::Bool => ScalarType::Bool,
            _ => return None,
        };
        Some(Self {
            name: f.name.clone(),
            ty,
            optional: false,
        })
    }

    /// The optional field whose presence field `f` is, by name, if `f` is a BOOL named as one
    /// ([`presence_name`]); whether that field is declared is the caller's to check.
    pub(crate) fn presence_of(f: &milvus::proto::schema::FieldSchema) -> Option<&str> {
        let name = f.name.strip_suffix(PRESENCE_SUFFIX)?;
        let bool = DataType::try_from(f.data_type).ok()? == DataType::Bool;
        bool.then_some(name)
    }

    /// The Milvus fields that hold this field: its own, then its presence field when optional.
    pub(crate) fn column_names(&self) -> Vec<String> {
        let mut names = vec![self.name.clone()];
        if self.optional {
            names.push(presence_name(&self.name));
        }
        names
    }

    /// What a document's columns of this field hold ([`Self::column_names`]) for its value
    /// (`None`: an optional field the document lacks): the value, or the zero of the type as
    /// a placeholder, then, when optional, whether the document holds the field.
    pub(crate) fn cells(&self, value: Option<ScalarValue>) -> Vec<ScalarValue> {
        let present = value.is_some();
        let mut cells = vec![value.unwrap_or(match self.ty {
            ScalarType::String(_) => ScalarValue::String(String::new()),
            ScalarType::Int => ScalarValue::Int(0),
            ScalarType::Float => ScalarValue::Float(0.0),
            ScalarType::Bool => ScalarValue::Bool(false),
        })];
        if self.optional {
            cells.push(ScalarValue::Bool(present));
        }
        cells
    }

    /// The document's value of this field as its column takes it (`None`: the field is
    /// optional and the document lacks it or holds null, which gclip's filters take for
    /// missing), or why the document cannot be written: it lacks a required field, or holds a
    /// value of another type (a list, null for a required field, a string too long, an integer
    /// beyond 2^53). `role` says what the field is for the error ("the partition key of
    /// ADDRESS"), `holds` what every document must do.
    pub(crate) fn value_in(
        &self,
        id: &str,
        fields: &Fields,
        role: &str,
        holds: &str,
    ) -> Result<Option<ScalarValue>, String> {
        let name = &self.name;
        let value = match fields.get(name.as_str()) {
            None | Some(Json::Null) if self.optional => return Ok(None),
            Some(value) => value,
            None => {
                return Err(format!(
                    "document {id:?} has no field {name:?}, {role}: every document {holds}"
                ))
            }
        };
        let got = match (self.ty, value) {
            (ScalarType::String(max), Json::String(s)) => {
                if s.len() > max as usize {
                    return Err(format!(
                        "document {id:?}: field {name:?} ({role}) is {} bytes long; it takes at \
                         most {max}",
                        s.len()
                    ));
                }
                Some(ScalarValue::String(s.clone()))
            }
            (ScalarType::Int, Json::Number(n)) => n
                .as_i64()
                .filter(|i| i.unsigned_abs() <= MAX_EXACT_INT as u64)
                .map(ScalarValue::Int),
            (ScalarType::Float, Json::Number(n)) => n.as_f64().map(ScalarValue::Float),
            (ScalarType::Bool, Json::Bool(b)) => Some(ScalarValue::Bool(*b)),
            _ => None,
        };
        got.map(Some).ok_or_else(|| {
            let mut shown = value.to_string();
            if shown.len() > 40 {
                let cut = (0..=40)
                    .rev()
                    .find(|&i| shown.is_char_boundary(i))
                    .unwrap_or(0);
                shown.truncate(cut);
                shown.push('…');
            }
            format!(
                "document {id:?}: field {name:?} ({role}) is {shown}, not {}",
                self.ty.wanted()
            )
        })
    }

    /// Whether a document's columns of this field (`held`, as [`Self::cells`] writes them) say
    /// `value`: the same cells, except that the placeholder beside a false presence field may
    /// be anything (filters never read it).
    pub(crate) fn holds(&self, value: Option<ScalarValue>, held: &[ScalarValue]) -> bool {
        match (value, held) {
            (None, [_, ScalarValue::Bool(false)]) => self.optional,
            (value, held) => self.cells(value) == held,
        }
    }

    /// Empty columns of this field's type, then of its presence field when optional (as
    /// [`Self::column_names`]).
    pub(crate) fn empty_columns(&self) -> Vec<ValueVec> {
        let mut columns = vec![match self.ty {
            ScalarType::String(_) => ValueVec::String(Vec::new()),
            ScalarType::Int => ValueVec::Long(Vec::new()),
            ScalarType::Float => ValueVec::Double(Vec::new()),
            ScalarType::Bool => ValueVec::Bool(Vec::new()),
        }];
        if self.optional {
            columns.push(ValueVec::Bool(Vec::new()));
        }
        columns
    }
}

impl ScalarValue {
    /// Appends the value to a column of its type (from [`ScalarField::empty_column`]); false
    /// when the column is of another type.
    pub(crate) fn push_to(self, column: &mut ValueVec) -> bool {
        match (self, column) {
            (Self::String(v), ValueVec::String(c)) => c.push(v),
            (Self::Int(v), ValueVec::Long(c)) => c.push(v),
            (Self::Float(v), ValueVec::Double(c)) => c.push(v),
            (Self::Bool(v), ValueVec::Bool(c)) => c.push(v),
            _ => return false,
        }
        true
    }

    /// Row `i` of a column the server returned, if the column has one of a scalar type.
    pub(crate) fn at(column: &ValueVec, i: usize) -> Option<Self> {
        Some(match column {
            ValueVec::String(c) => Self::String(c.get(i)?.clone()),
            ValueVec::Long(c) => Self::Int(*c.get(i)?),
            ValueVec::Double(c) => Self::Float(*c.get(i)?),
            ValueVec::Bool(c) => Self::Bool(*c.get(i)?),
            _ => return None,
        })
    }

    /// The number of rows of a column of a scalar type.
    pub(crate) fn rows(column: &ValueVec) -> Option<usize> {
        Some(match column {
            ValueVec::String(c) => c.len(),
            ValueVec::Long(c) => c.len(),
            ValueVec::Double(c) => c.len(),
            ValueVec::Bool(c) => c.len(),
            _ => return None,
        })
    }

    /// As JSON, for reports.
    pub(crate) fn to_json(&self) -> Json {
        match self {
            Self::String(s) => Json::from(s.as_str()),
            Self::Int(i) => Json::from(*i),
            Self::Float(f) => Json::from(*f),
            Self::Bool(b) => Json::from(*b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str, ty: ScalarType) -> ScalarField {
        ScalarField {
            name: name.into(),
            ty,
            optional: false,
        }
    }

    fn optional(name: &str, ty: ScalarType) -> ScalarField {
        ScalarField {
            optional: true,
            ..field(name, ty)
        }
    }

    #[test]
    fn a_question_mark_declares_a_field_optional() {
        assert_eq!(
            parse_scalar_fields("rating:float?, brand:string(8)?,sold : bool ? ,stock:INT?,n:int")
                .unwrap(),
            vec![
                optional("rating", ScalarType::Float),
                optional("brand", ScalarType::String(8)),
                optional("sold", ScalarType::Bool),
                optional("stock", ScalarType::Int),
                field("n", ScalarType::Int),
            ]
        );
        let f = parse_scalar_fields("a:string?,b:int").unwrap();
        let shown: Vec<String> = f.iter().map(|f| f.to_string()).collect();
        assert_eq!(shown, ["a:string(256)?", "b:int"]);
        assert_eq!(presence_name("rating"), "rating__present");
        assert_eq!(f[0].column_names(), ["a", "a__present"]);
        assert_eq!(f[1].column_names(), ["b"]);
        // An optional field takes two of the 32 Milvus fields.
        let fits: Vec<String> = (0..MAX_SCALAR_FIELDS / 2)
            .map(|i| format!("f{i}:int?"))
            .collect();
        assert_eq!(parse_scalar_fields(&fits.join(",")).unwrap().len(), 16);
        let mixed: Vec<String> = (0..MAX_SCALAR_FIELDS - 2)
            .map(|i| format!("f{i}:int"))
            .chain(["o:bool?".to_string()])
            .collect();
        assert_eq!(parse_scalar_fields(&mixed.join(",")).unwrap().len(), 31);
        for (bad, says) in [
            (
                format!("{},g:float?", fits.join(",")),
                "17 fields, 17 of them optional (each with a presence field): 34 Milvus fields, \
                 more than 32",
            ),
            (
                format!("{},o2:int?", mixed.join(",")),
                "32 fields, 2 of them optional (each with a presence field): 34 Milvus fields",
            ),
            ("price:int??".into(), r#"price: unknown type "int?""#),
            ("price:?".into(), r#"price: unknown type """#),
            ("price?:int".into(), "ASCII letters"),
            ("brand:string(0)?".into(), "from 1 to 65535"),
            (
                "rating__present:bool".into(),
                "`rating__present` ends in `__present`, which gclip keeps for the presence \
                 fields",
            ),
            ("X__Present:int?".into(), "ends in `__present`"),
        ] {
            let e = parse_scalar_fields(&bad).unwrap_err();
            assert!(e.contains(says), "{bad:.80}: {e}");
        }
        // A partition key cannot take a presence field's name either.
        assert!(check_field_name("tenant__present", "a partition key").is_err());
        assert!(check_field_name("present", "a partition key").is_ok());
        assert!(check_field_name("tenant_present", "a partition key").is_ok());
    }

    #[test]
    fn an_optional_field_may_be_missing_or_null_but_not_of_another_type() {
        let fields: Fields = json!({"rating": 4.5, "nothing": null, "brand": 3})
            .as_object()
            .unwrap()
            .clone();
        let value = |f: ScalarField| f.value_in("d1", &fields, "ROLE", "HOLDS");
        assert_eq!(
            value(optional("rating", ScalarType::Float)),
            Ok(Some(ScalarValue::Float(4.5)))
        );
        assert_eq!(value(optional("missing", ScalarType::Float)), Ok(None));
        assert_eq!(value(optional("nothing", ScalarType::Int)), Ok(None));
        let e = value(optional("brand", ScalarType::String(8))).unwrap_err();
        assert!(e.contains(r#"document "d1": field "brand" (ROLE) is 3, not a string"#));
        // Required: missing and null are refused.
        assert!(value(field("missing", ScalarType::Float))
            .unwrap_err()
            .contains("has no field"));
        assert!(value(field("nothing", ScalarType::Int))
            .unwrap_err()
            .contains("is null"));

        // Cells: the value or the zero of the type, then whether the field is there.
        for (ty, zero) in [
            (ScalarType::String(4), ScalarValue::String(String::new())),
            (ScalarType::Int, ScalarValue::Int(0)),
            (ScalarType::Float, ScalarValue::Float(0.0)),
            (ScalarType::Bool, ScalarValue::Bool(false)),
        ] {
            let f = optional("f", ty);
            assert_eq!(f.cells(None), [zero.clone(), ScalarValue::Bool(false)]);
            let mut columns = f.empty_columns();
            assert_eq!(columns.len(), 2);
            for (cell, column) in f.cells(None).into_iter().zip(&mut columns) {
                assert!(cell.push_to(column), "{ty}");
            }
            assert_eq!(field("f", ty).cells(Some(zero.clone())), [zero]);
        }
        let f = optional("rating", ScalarType::Float);
        let held = f.cells(Some(ScalarValue::Float(2.0)));
        assert_eq!(held, [ScalarValue::Float(2.0), ScalarValue::Bool(true)]);
        // What the columns hold agrees with the document, the placeholder beside a false
        // presence field being anything.
        assert!(f.holds(Some(ScalarValue::Float(2.0)), &held));
        assert!(!f.holds(Some(ScalarValue::Float(3.0)), &held));
        assert!(!f.holds(None, &held));
        let absent = [ScalarValue::Float(7.0), ScalarValue::Bool(false)];
        assert!(f.holds(None, &absent));
        assert!(!f.holds(Some(ScalarValue::Float(7.0)), &absent));
        let required = field("rating", ScalarType::Float);
        assert!(required.holds(Some(ScalarValue::Float(7.0)), &[ScalarValue::Float(7.0)]));
        assert!(!required.holds(None, &absent));
    }

    #[test]
    fn declarations_parse_with_their_types() {
        assert_eq!(parse_scalar_fields("").unwrap(), vec![]);
        assert_eq!(parse_scalar_fields("  ").unwrap(), vec![]);
        assert_eq!(
            parse_scalar_fields(" price:int, brand : string(64),rating:float,sold:BOOL,sku:string")
                .unwrap(),
            vec![
                field("price", ScalarType::Int),
                field("brand", ScalarType::String(64)),
                field("rating", ScalarType::Float),
                field("sold", ScalarType::Bool),
                field("sku", ScalarType::String(DEFAULT_STRING_BYTES)),
            ]
        );
        let longest = format!("n:string({MAX_STRING_BYTES})");
        assert_eq!(
            parse_scalar_fields(&longest).unwrap()[0].ty,
            ScalarType::String(MAX_STRING_BYTES)
        );
        let most: Vec<String> = (0..MAX_SCALAR_FIELDS)
            .map(|i| format!("f{i}:int"))
            .collect();
        assert_eq!(
            parse_scalar_fields(&most.join(",")).unwrap().len(),
            MAX_SCALAR_FIELDS
        );
        // Declarations read back as written.
        let f = parse_scalar_fields("a:string(7),b:int").unwrap();
        let shown: Vec<String> = f.iter().map(|f| f.to_string()).collect();
        assert_eq!(shown, ["a:string(7)", "b:int"]);
    }

    #[test]
    fn bad_declarations_say_what_is_wrong() {
        let too_many: Vec<String> = (0..=MAX_SCALAR_FIELDS)
            .map(|i| format!("f{i}:int"))
            .collect();
        let too_many = too_many.join(",");
        let long_name = format!("{}:int", "n".repeat(MAX_FIELD_NAME + 1));
        let huge = "x".repeat(100_000);
        for (bad, says) in [
            ("price", "is not name:type or name:type?"),
            ("price:int,", "is not name:type"),
            ("price:integer", "unknown type \"integer\""),
            ("price:", "unknown type"),
            ("brand:string(0)", "from 1 to 65535"),
            ("brand:string(65536)", "from 1 to 65535"),
            ("brand:string(-1)", "from 1 to 65535"),
            ("brand:string(x)", "from 1 to 65535"),
            ("2price:int", "not starting with a digit"),
            ("pri-ce:int", "ASCII letters"),
            (long_name.as_str(), "1 to 64"),
            ("id:string", "gclip's own fields"),
            ("Fields:int", "gclip's own fields"),
            ("like:bool", "expression language"),
            ("json_x:bool", "expression language"),
            (
                "price:int,Price:float",
                "Price is declared twice (as price:int already)",
            ),
            (too_many.as_str(), "33 fields, more than 32"),
            (huge.as_str(), "is not name:type"),
        ] {
            let e = parse_scalar_fields(bad).unwrap_err();
            assert!(e.contains(says), "{bad:.80}: {e}");
            assert!(e.len() < 300, "{bad:.80}: {e}");
        }
    }

    #[test]
    fn values_must_have_the_declared_type() {
        let fields: Fields = json!({
            "brand": "acme", "long": "abcdefghi", "price": 12, "big": 9007199254740993u64,
            "frac": 2.5, "whole_float": 3.0, "edge": 9007199254740992i64, "neg": -9007199254740992i64,
            "sold": true, "tags": ["a"], "nothing": null,
        })
        .as_object()
        .unwrap()
        .clone();
        let value = |name: &str, ty| field(name, ty).value_in("d1", &fields, "ROLE", "HOLDS");
        let value = |name: &str, ty| value(name, ty).map(|v| v.unwrap());
        assert_eq!(
            value("brand", ScalarType::String(4)),
            Ok(ScalarValue::String("acme".into()))
        );
        assert_eq!(value("price", ScalarType::Int), Ok(ScalarValue::Int(12)));
        assert_eq!(
            value("edge", ScalarType::Int),
            Ok(ScalarValue::Int(MAX_EXACT_INT))
        );
        assert_eq!(
            value("neg", ScalarType::Int),
            Ok(ScalarValue::Int(-MAX_EXACT_INT))
        );
        assert_eq!(
            value("price", ScalarType::Float),
            Ok(ScalarValue::Float(12.0))
        );
        assert_eq!(
            value("frac", ScalarType::Float),
            Ok(ScalarValue::Float(2.5))
        );
        assert_eq!(value("sold", ScalarType::Bool), Ok(ScalarValue::Bool(true)));
        for (name, ty, says) in [
            (
                "long",
                ScalarType::String(8),
                "is 9 bytes long; it takes at most 8",
            ),
            (
                "missing",
                ScalarType::Int,
                r#"document "d1" has no field "missing", ROLE: every document HOLDS"#,
            ),
            (
                "big",
                ScalarType::Int,
                "is 9007199254740993, not a whole number",
            ),
            ("frac", ScalarType::Int, "is 2.5, not a whole number"),
            ("whole_float", ScalarType::Int, "is 3.0, not a whole number"),
            ("brand", ScalarType::Int, r#"is "acme", not a whole number"#),
            ("brand", ScalarType::Float, r#"is "acme", not a number"#),
            ("price", ScalarType::String(9), "is 12, not a string"),
            ("price", ScalarType::Bool, "is 12, not true or false"),
            ("tags", ScalarType::String(9), r#"is ["a"], not a string"#),
            ("nothing", ScalarType::Float, "is null, not a number"),
        ] {
            let e = value(name, ty).unwrap_err();
            assert!(e.contains(says), "{name} {ty}: {e}");
            assert!(e.contains("d1") && e.contains(name), "{e}");
        }
    }

    #[test]
    fn columns_take_values_of_their_type_only() {
        let mut c = field("p", ScalarType::Int).empty_columns().remove(0);
        assert!(ScalarValue::Int(3).push_to(&mut c));
        assert!(!ScalarValue::Float(3.0).push_to(&mut c));
        assert_eq!(ScalarValue::rows(&c), Some(1));
        assert_eq!(ScalarValue::at(&c, 0), Some(ScalarValue::Int(3)));
        assert_eq!(ScalarValue::at(&c, 1), None);
        assert_eq!(ScalarValue::rows(&ValueVec::Json(vec![])), None);
    }
}
